"""Exact attention: each kernel/backend next to torch SDPA, same inputs, one process.

Prints forward and forward+backward time and peak memory, and their ratios to SDPA (softmax,
torch's fused kernel), at a fixed number of tokens B * L, causal and not. Writes a CSV and a
markdown table (for benchmarks/RESULTS.md) when asked.

    python benchmarks/attention.py                        # H=8, D=64, L = 512 .. 16384
    python benchmarks/attention.py --lengths 1024 4096 --md results.md --csv results.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from functools import partial

import torch
import torch.nn.functional as F

import attnlab
from attnlab.profiling import peak_memory, time_call
from attnlab.provenance import environment_info

# (label, kernel, backend); the first is the yardstick.
METHODS = [
    ("sdpa", "softmax", "sdpa"),
    ("softmax/chunked", "softmax", "chunked"),
    ("expressive/cpp", "expressive", "cpp"),
    ("expressive/chunked", "expressive", "chunked"),
    ("squared/cpp", "squared", "cpp"),
    ("squared/chunked", "squared", "chunked"),
    ("expressive/reference", "expressive", "reference"),
]


def _runner(kernel: str, backend: str, q, k, v, causal: bool):
    if backend == "sdpa":  # torch itself, not attnlab's wrapper
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return lambda: attnlab.attention(q, k, v, kernel=kernel, backend=backend, is_causal=causal)


def measure(kernel: str, backend: str, q, k, v, causal: bool, repeats: int) -> dict[str, float | None]:
    run = _runner(kernel, backend, q, k, v, causal)

    def forward():
        with torch.no_grad():
            run()

    def forward_backward():
        run().sum().backward()
        for t in (q, k, v):
            t.grad = None

    return {
        "fwd_s": time_call(forward, repeats=repeats, warmup=1 if repeats > 1 else 0),
        "fb_s": time_call(forward_backward, repeats=repeats, warmup=1 if repeats > 1 else 0),
        "fwd_bytes": peak_memory(forward),
        "fb_bytes": peak_memory(forward_backward),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--tokens", type=int, default=16384, help="B * L, fixed across lengths")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (best is kept)")
    parser.add_argument("--reference-cap-gib", type=float, default=4.0,
                        help="skip the materializing reference when its weights would exceed this")
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS],
                        choices=[m[0] for m in METHODS], help="which rows to run (sdpa always runs first)")
    parser.add_argument("--csv", help="write every number to this CSV file")
    parser.add_argument("--md", help="write the markdown table to this file")
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.tokens < 1 or args.repeats < 1:
        parser.error("--lengths, --tokens and --repeats must be >= 1")

    env = environment_info()
    header = (f"device: {env['device']} ({env['processor']}, {env['torch_threads']} threads); "
              f"torch {env['torch']}; attnlab {env['attnlab']}; commit {env['git_commit']}")
    print(header)
    print(f"H={args.heads}, D={args.dim}, B*L={args.tokens}, float32; ratio = method / sdpa\n")
    columns = ["causal", "L", "B", "method", "fwd_ms", "fwd_x", "fb_ms", "fb_x", "fwd_MiB", "fwd_mem_x",
               "fb_MiB", "fb_mem_x"]
    rows: list[dict] = []
    causal_modes = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    for causal in causal_modes:
        for L in args.lengths:
            B = max(1, args.tokens // L)
            g = torch.Generator().manual_seed(L)
            q, k, v = (torch.randn(B, args.heads, L, args.dim, generator=g).requires_grad_() for _ in range(3))
            base = None
            for label, kernel, backend in METHODS:
                if label != "sdpa" and label not in args.methods:
                    continue
                if backend == "reference" and 3 * B * args.heads * L * L * 4 > args.reference_cap_gib * 2**30:
                    print(f"  causal={causal!s:<5} L={L:<6} {label:<21} skipped (materializes {L}x{L} weights)")
                    continue
                m = measure(kernel, backend, q, k, v, causal, args.repeats)
                base = base or m
                ratio = partial(_ratio, m, base)
                row = {
                    "causal": causal, "L": L, "B": B, "method": label,
                    "fwd_ms": m["fwd_s"] * 1e3, "fwd_x": ratio("fwd_s"),
                    "fb_ms": m["fb_s"] * 1e3, "fb_x": ratio("fb_s"),
                    "fwd_MiB": None if m["fwd_bytes"] is None else m["fwd_bytes"] / 2**20,
                    "fwd_mem_x": ratio("fwd_bytes"),
                    "fb_MiB": None if m["fb_bytes"] is None else m["fb_bytes"] / 2**20,
                    "fb_mem_x": ratio("fb_bytes"),
                }
                rows.append(row)
                print("  " + "  ".join(_fmt(key, row[key]) for key in columns), flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    if args.md:
        with open(args.md, "w") as f:
            f.write(header + "\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
            for row in rows:
                f.write("| " + " | ".join(_value(key, row[key]) for key in columns) + " |\n")
    return 0


def _ratio(m: dict, base: dict, key: str) -> float | None:
    return m[key] / base[key] if m[key] is not None and base[key] else None


def _value(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key.endswith("_x"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _fmt(key: str, value) -> str:
    return f"{key}={_value(key, value):>8}"


if __name__ == "__main__":
    sys.exit(main())
