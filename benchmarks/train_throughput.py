"""Training throughput (tokens/s) of a causal LM with softmax vs expressive attention, side by side.

A 6-layer, d_model=256 model at context 256 takes full training steps (forward, backward, AdamW)
on random tokens. The kernels alternate in rounds within one process, so machine noise hits both;
the ratio EA / softmax is the number to read (target: >= 0.9).

    python benchmarks/train_throughput.py [--steps 20] [--batch 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from attnlab.models import CausalLM, ModelConfig, masked_cross_entropy

KERNELS = ("softmax", "expressive")


def step_time(model: CausalLM, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds for one training step (synchronized on CUDA)."""
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = masked_cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per kernel and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch, args.context + 1), generator=g)
    x, y = x[:, :-1].to(device), x[:, 1:].to(device)
    runs = {}
    for kernel in KERNELS:
        cfg = ModelConfig(vocab_size=256, context=args.context, n_layers=args.layers, d_model=args.d_model,
                          n_heads=args.heads, kernel=kernel)
        model = CausalLM(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(args.warmup):
            step_time(model, opt, x, y)
        runs[kernel] = (model, opt, [])
    for _ in range(args.rounds):
        for kernel in KERNELS:
            model, opt, times = runs[kernel]
            times.extend(step_time(model, opt, x, y) for _ in range(args.steps))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    tokens = args.batch * args.context
    print(f"device: {device.type} ({name}); torch {torch.__version__}")
    print(f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, context {args.context}, "
          f"batch {args.batch}; {args.rounds} x {args.steps} timed steps per kernel")
    rate = {}
    for kernel in KERNELS:
        times = runs[kernel][2]
        med = statistics.median(times)
        rate[kernel] = tokens / med
        print(f"{kernel:>10}: {rate[kernel]:9.0f} tokens/s  (median step {med * 1e3:7.1f} ms, "
              f"min {min(times) * 1e3:7.1f} ms)")
    best = {k: min(runs[k][2]) for k in KERNELS}
    print(f"ratio expressive / softmax: {rate['expressive'] / rate['softmax']:.3f} by median step, "
          f"{best['softmax'] / best['expressive']:.3f} by fastest step  (target >= 0.9)")


if __name__ == "__main__":
    main()
