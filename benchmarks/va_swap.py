"""va-swap before and after issue 13's speed-up, timed in one process on the same problems.

The reference is the implementation of commit 536064a (tests/va_swap_reference.py). Problems are
synthetic heads: p = softmax(q k^T / sqrt(D) * temp) with Gaussian q, k, v (temp = 1 gives weights
a skewness 1 - H(p)/log S of about 0.1, as flat as the flatter heads of small trained models; it is printed).

    .venv/bin/python benchmarks/va_swap.py [--shape minilm|quick] [--seqs N] [--rs 2 4] [--temp T]

``minilm``: 12 heads of dim 32, L = S = 128 (one sequence); ``quick``: Study 1's quick preset, 4 heads
of dim 16, context 128, ``--seqs`` sequences (16 in the preset; the reference takes minutes there).
Prints seconds per call (best of ``--repeat``), the speed-up and the largest objective difference.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from attnlab.approx.value_aware import va_swap
from va_swap_reference import va_swap_reference

SHAPES = {"minilm": (12, 32), "quick": (4, 16)}  # heads, head dim


def problem(seqs: int, heads: int, dim: int, length: int, temp: float, seed: int = 0):
    """(p, v) of ``seqs`` x ``heads`` synthetic attention heads, float32."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(seqs, heads, length, dim, generator=g)
    k = torch.randn(seqs, heads, length, dim, generator=g)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim) * temp, -1)
    return p, torch.randn(seqs, heads, 1, length, dim, generator=g)


def timed(fn, repeat: int):
    """(best seconds, last result) over ``repeat`` calls."""
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="minilm")
    ap.add_argument("--seqs", type=int, default=1)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rs", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--temp", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-reference", action="store_true", help="time the fast path only")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    heads, dim = SHAPES[args.shape]
    p, v = problem(args.seqs, heads, dim, args.length, args.temp)
    o = (p.unsqueeze(-1) * v.squeeze(2).unsqueeze(2)).sum(-2)
    flat = float(1 + (p * p.clamp_min(1e-30).log()).sum(-1).mean() / math.log(args.length))
    print(f"{args.shape}: {p.shape[:-1].numel()} queries, {heads} heads of dim {dim}, S={args.length}, "
          f"temp {args.temp}, skewness 1 - H/log S = {flat:.3f}, {torch.get_num_threads()} threads")
    va_swap(p[:1, :1, :4], v[:1, :1], 2)  # warm-up
    for r in args.rs:
        t_new, new = timed(lambda r=r: va_swap(p, v, r), args.repeat)
        line = f"r={r}: fast {t_new:.2f} s"
        if not args.no_reference:
            t_old, old = timed(lambda r=r: va_swap_reference(p, v, r), args.repeat)
            e_new, e_old = ((new.output - o) ** 2).sum(-1), ((old.output - o) ** 2).sum(-1)
            line += (f", reference {t_old:.2f} s, speed-up {t_old / t_new:.1f}x, mean squared error "
                     f"{e_new.mean():.4g} vs {e_old.mean():.4g}, largest difference {(e_new - e_old).abs().max():.2g}")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
