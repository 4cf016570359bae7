"""Issue 6's CPU target, measured so that machine noise cannot decide it: EA vs torch SDPA.

Each round times SDPA (softmax) and EA (one attnlab backend) back to back on the same inputs,
forward and forward+backward, and records the ratio EA / SDPA of that round; the table gives the
median ratio over the rounds and the range. Interleaving matters on a shared VM, where absolute
times drift by 30% between minutes: a drift slows both sides of a ratio alike.

    python benchmarks/cpu_target.py                       # L = 2048 4096 8192, causal and not
    python benchmarks/cpu_target.py --backend chunked --rounds 7 --csv target.csv

Targets (issue 6, D=64, H=8, L >= 2048): forward <= 1.0x SDPA, forward+backward <= 1.3x,
peak memory <= 2x (memory is measured by benchmarks/attention.py).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys

import torch
import torch.nn.functional as F

import attnlab
from attnlab.profiling import time_call
from attnlab.provenance import environment_info


def one_round(q, k, v, causal: bool, backend: str) -> dict[str, float]:
    """Forward and forward+backward seconds of SDPA and of EA, one after the other."""
    runs = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "ea": lambda: attnlab.attention(q, k, v, kernel="expressive", is_causal=causal, backend=backend),
    }
    times = {}
    for name, run in runs.items():
        with torch.no_grad():
            times[f"{name}_fwd"] = time_call(run, repeats=1, warmup=0)

        def forward_backward(run=run):
            run().sum().backward()
            for t in (q, k, v):
                t.grad = None

        times[f"{name}_fb"] = time_call(forward_backward, repeats=1, warmup=0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--tokens", type=int, default=16384, help="B * L, fixed across lengths")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", default="cpp", help="attnlab backend for EA (default: cpp)")
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--csv", help="write every round's times to this CSV file")
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.tokens < 1 or args.rounds < 1:
        parser.error("--lengths, --tokens and --rounds must be >= 1")

    env = environment_info()
    print(f"device: {env['device']} ({env['processor']}, {env['torch_threads']} threads); "
          f"torch {env['torch']}; attnlab {env['attnlab']}; commit {env['git_commit']}")
    print(f"H={args.heads}, D={args.dim}, B*L={args.tokens}, float32, EA backend {args.backend!r}, "
          f"{args.rounds} interleaved rounds; ratio = EA / SDPA per round\n")
    print("| causal | L | fwd median | fwd range | fwd+bwd median | fwd+bwd range |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for causal in {"both": [False, True], "yes": [True], "no": [False]}[args.causal]:
        for L in args.lengths:
            B = max(1, args.tokens // L)
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(B, args.heads, L, args.dim, generator=g).requires_grad_() for _ in range(3))
            one_round(q, k, v, causal, args.backend)  # warm-up: allocator, a first build of the kernels
            ratios = {"fwd": [], "fb": []}
            for r in range(args.rounds):
                times = one_round(q, k, v, causal, args.backend)
                for part in ratios:
                    ratios[part].append(times[f"ea_{part}"] / times[f"sdpa_{part}"])
                rows.append({"causal": causal, "L": L, "B": B, "round": r, **times})
            f, fb = ratios["fwd"], ratios["fb"]
            print(f"| {'yes' if causal else 'no'} | {L} | {statistics.median(f):.2f} | {min(f):.2f}-{max(f):.2f} "
                  f"| {statistics.median(fb):.2f} | {min(fb):.2f}-{max(fb):.2f} |", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
