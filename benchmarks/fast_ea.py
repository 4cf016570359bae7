"""Fast expressive/squared attention vs softmax SDPA: time, TFLOP/s and peak memory.

For each head dim D, causal flag and length L (batch B = tokens // L, so B * L is fixed), runs

    sdpa      softmax, torch.nn.functional.scaled_dot_product_attention
    chunked   attnlab backend 'chunked', kernels 'expressive' and 'squared'
    cpp       attnlab backend 'cpp' (fused C++ CPU kernels), kernels 'expressive' and 'squared',
              on CPU where they build
    flex      attnlab backend 'flex' (torch FlexAttention, compiled on CUDA), kernel 'expressive';
              on CPU the forward only (torch has no CPU backward for it)
    linear    attnlab backend 'linear', kernel 'squared' (degree-2 features, linear in L)
    triton    attnlab backend 'triton' (fused Triton kernels), kernels 'expressive' and 'squared',
              wherever the backend is registered: CUDA with triton installed, or Triton's CPU
              interpreter (TRITON_INTERPRET=1), which checks semantics and is far too slow to time
              at these sizes (pick methods with --only)
    fla-based / fla-rebased   flash-linear-attention's parallel_based / parallel_rebased, CUDA
              only, if ``fla`` is installed. UNTESTED: written without access to a GPU.

and reports forward, backward and forward+backward time (best of --repeats after a warm-up,
``attnlab.profiling.time_call``), TFLOP/s with FlashAttention's count (forward 4 B H L S D,
halved when causal; backward 2.5x the forward; the same count for every method, so for
``linear`` it is an "equivalent" rate) and the peak memory added by forward+backward
(``attnlab.profiling.peak_memory``). Prints a table and writes a CSV.

    python benchmarks/fast_ea.py                          # CPU defaults, about 5 minutes on 2 cores
    python benchmarks/fast_ea.py --device cuda --csv fast_ea_h100.csv   # L 512..32768, D 64 128, bf16
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

import attnlab
from attnlab.backends import available_backends, cpp
from attnlab.backends.flex import flex_attention_backend, flex_unavailable_reason
from attnlab.functional import canonicalize
from attnlab.profiling import peak_memory, time_call
from attnlab.provenance import environment_info

Attn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]


def _attnlab(kernel: str, backend: str) -> Attn:
    return lambda q, k, v, causal: attnlab.attention(q, k, v, kernel=kernel, is_causal=causal, backend=backend)


def _flex(q, k, v, causal):
    problem, shape = canonicalize(q, k, v, None, causal, None, False, 1e-6, attnlab.get_kernel("expressive"))
    return flex_attention_backend(problem).reshape(shape)


def _fla_methods() -> dict[str, Attn]:
    """flash-linear-attention's Based kernels, (B, H, L, D) -> its (B, L, H, D) layout. UNTESTED."""
    try:
        from fla.ops.based import parallel_based
        from fla.ops.rebased import parallel_rebased
    except ImportError:
        return {}

    def wrap(op):
        def run(q, k, v, causal):
            if not causal:
                raise ValueError("fla's parallel_based is causal only")
            out = op(*(t.transpose(1, 2) for t in (q, k, v)), use_norm=True)
            return out.transpose(1, 2)
        return run

    return {"fla-based/squared": wrap(parallel_based), "fla-rebased/squared": wrap(parallel_rebased)}


def methods(device: str) -> dict[str, Attn]:
    found: dict[str, Attn] = {
        "sdpa/softmax": lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "chunked/expressive": _attnlab("expressive", "chunked"),
        "chunked/squared": _attnlab("squared", "chunked"),
        "linear/squared": _attnlab("squared", "linear"),
    }
    if device == "cpu" and cpp.build_error() is None:
        found["cpp/expressive"] = _attnlab("expressive", "cpp")
        found["cpp/squared"] = _attnlab("squared", "cpp")
    if flex_unavailable_reason(device, needs_grad=False) is None:
        found["flex/expressive"] = _flex
    if "triton" in available_backends():
        found["triton/expressive"] = _attnlab("expressive", "triton")
        found["triton/squared"] = _attnlab("squared", "triton")
    if device.startswith("cuda"):
        found.update(_fla_methods())
    return found


def flops(B: int, H: int, L: int, D: int, causal: bool) -> float:
    """FlashAttention's forward FLOP count 4 B H L^2 D (half when causal)."""
    return 4.0 * B * H * L * L * D / (2 if causal else 1)


def measure(fn: Attn, B, H, L, D, causal, dtype, device, repeats) -> dict[str, float]:
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g, device=device, dtype=dtype) for _ in range(3))
    row: dict[str, float] = {}
    with torch.no_grad():
        row["fwd_s"] = time_call(lambda: fn(q, k, v, causal), repeats=repeats)
    grad_ok = flex_unavailable_reason(device, needs_grad=True) is None or fn is not _flex
    if grad_ok:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        out = fn(q, k, v, causal)
        do = torch.randn_like(out)
        row["bwd_s"] = time_call(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), repeats=repeats)
        del out

        def step():
            torch.autograd.grad(fn(q, k, v, causal), (q, k, v), do)

        row["fwdbwd_s"] = time_call(step, repeats=repeats)
        mem = peak_memory(step, device)
        row["peak_mib"] = mem / 2**20 if mem is not None else math.nan
    f = flops(B, H, L, D, causal)
    for key, mult in (("fwd", 1.0), ("bwd", 2.5), ("fwdbwd", 3.5)):
        row[f"{key}_tflops"] = f * mult / row[f"{key}_s"] / 1e12 if f"{key}_s" in row else math.nan
    return row


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--dims", type=int, nargs="+", default=None)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16384, help="B * L, fixed")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--causal", default="both", choices=["both", "yes", "no"])
    parser.add_argument("--only", nargs="*", default=None, help="method names to run (default all)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--csv", default="fast_ea.csv")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    lengths = args.lengths or ([512 * 2**i for i in range(7)] if on_cuda else [512, 1024, 2048])
    dims = args.dims or ([64, 128] if on_cuda else [64])
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]

    info = environment_info()
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"# device={args.device} dtype={dtype} heads={args.heads} tokens={args.tokens}")
    table = methods(args.device)
    if args.only:
        table = {name: fn for name, fn in table.items() if name in args.only}
    cols = ["fwd_s", "bwd_s", "fwdbwd_s", "fwd_tflops", "bwd_tflops", "fwdbwd_tflops", "peak_mib"]
    rows = []
    print(f"{'method':22s} {'D':>4s} {'causal':>6s} {'L':>6s} {'B':>4s} " + " ".join(f"{c:>13s}" for c in cols))
    for D in dims:
        for causal in causals:
            for L in lengths:
                B = max(1, args.tokens // L)
                for name, fn in table.items():
                    try:
                        row = measure(fn, B, args.heads, L, D, causal, dtype, args.device, args.repeats)
                    except (ValueError, RuntimeError, NotImplementedError) as err:
                        print(f"{name:22s} {D:4d} {causal!s:>6s} {L:6d} {B:4d} skipped: {str(err)[:80]}")
                        continue
                    row = {"method": name, "D": D, "causal": causal, "L": L, "B": B, **row}
                    rows.append(row)
                    print(f"{name:22s} {D:4d} {causal!s:>6s} {L:6d} {B:4d} "
                          + " ".join(f"{row.get(c, math.nan):13.4g}" for c in cols))
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "D", "causal", "L", "B", *cols], restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"# wrote {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
