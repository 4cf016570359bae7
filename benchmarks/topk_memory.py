"""Peak memory and time: chunked top-k attention vs exact attention (reference and chunked).

For each length L (B=1, D=64, self-attention, L = S) and each pass (forward under no_grad;
forward + backward with requires_grad inputs), runs

    reference   attnlab.attention(..., backend="reference")  materializes (L, L): skipped
                when its estimated peak exceeds --cap-gib
    chunked     attnlab.attention(..., backend="chunked")    exact, O(tile) extra memory
    topk        attnlab.approx.topk.topk_attention(top_k=K)  O(chunk * L) extra memory

Peak memory is the process RSS high-water mark (Linux): before each case "5" is written to
/proc/self/clear_refs, which resets VmHWM to the current RSS; the case reports VmHWM minus the
RSS before it, i.e. the memory the case added (inputs are allocated before the reset; glibc's
malloc_trim returns freed memory to the OS first, so memory left cached by an earlier case does
not hide this one's). Time
is wall-clock, one run after one untimed warm-up at the smallest length.

Usage (the default lengths 1024 4096 16384 take about 3 minutes on a 2-core CPU; every
doubling of L quadruples the time, since top-k still computes every score)::

    python benchmarks/topk_memory.py --lengths 1024 4096 16384 65536 --top-k 64
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable

import torch

import attnlab
from attnlab.approx.topk import topk_attention
from attnlab.profiling import timed_peak_memory


def measure(fn: Callable[[], None]) -> tuple[float, float]:
    """(seconds, MiB added to the peak memory) for one call of ``fn``, one run each."""
    seconds, added = timed_peak_memory(fn)
    return seconds, (added or 0) / 2**20


def make_case(method: str, q, k, v, kernel: str, top_k: int, backward: bool) -> Callable[[], None]:
    if method == "topk":
        run = lambda: topk_attention(q, k, v, top_k=top_k, kernel=kernel)  # noqa: E731
    else:
        run = lambda: attnlab.attention(q, k, v, kernel=kernel, backend=method)  # noqa: E731

    def case() -> None:
        if backward:
            out = run()
            out.backward(torch.ones_like(out))
            for t in (q, k, v):
                t.grad = None
        else:
            with torch.no_grad():
                run()

    return case


def reference_bytes(L: int, H: int, backward: bool) -> int:
    """Estimated peak of the reference backend: ~4 (fwd) or ~8 (fwd+bwd) fp32 (L, L) arrays."""
    return (8 if backward else 4) * H * L * L * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--kernel", default="softmax")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--cap-gib", type=float, default=4.0, help="skip reference above this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"# device: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# B=1 H={args.heads} D={args.dim} kernel={args.kernel} top_k={args.top_k} "
          f"fp32 seed={args.seed}; peak = VmHWM - VmRSS before the case")
    gen = torch.Generator().manual_seed(args.seed)
    methods = ["reference", "chunked", "topk"]
    warm = [torch.randn(1, args.heads, 256, args.dim, generator=gen) for _ in range(3)]
    for method in methods:  # warm-up, untimed
        make_case(method, *(t.requires_grad_() for t in warm), args.kernel, args.top_k, True)()

    header = (f"{'L':>6} {'pass':>7} | {'ref s':>7} {'chunk s':>8} {'topk s':>7} | "
              f"{'ref MiB':>8} {'chunk MiB':>9} {'topk MiB':>8} | "
              f"{'t ref/topk':>10} {'t chk/topk':>10} {'m ref/topk':>10} {'m chk/topk':>10}")
    print(header)
    print("-" * len(header))
    for L in args.lengths:
        q, k, v = (torch.randn(1, args.heads, L, args.dim, generator=gen) for _ in range(3))
        for backward in (False, True):
            for t in (q, k, v):
                t.requires_grad_(backward)
            res: dict[str, tuple[float, float] | None] = {}
            for method in methods:
                too_big = reference_bytes(L, args.heads, backward) > args.cap_gib * 2**30
                if method == "reference" and too_big:
                    res[method] = None
                    continue
                res[method] = measure(make_case(method, q, k, v, args.kernel, args.top_k, backward))
            print_row(L, backward, res)


def print_row(L: int, backward: bool, res: dict[str, tuple[float, float] | None]) -> None:
    """One table row: times, peaks, and the ratios of the exact backends to top-k."""
    t_k, m_k = res["topk"]

    def cell(name: str, i: int, fmt: str) -> str:
        r = res[name]
        return "skipped" if r is None else format(r[i], fmt)

    def ratio(name: str, i: int) -> str:
        r = res[name]
        return "skipped" if r is None else f"{r[i] / max(res['topk'][i], 1e-9):.2f}"

    print(f"{L:>6} {'fwd+bwd' if backward else 'fwd':>7} | "
          f"{cell('reference', 0, '.3f'):>7} {cell('chunked', 0, '.3f'):>8} "
          f"{t_k:>7.3f} | {cell('reference', 1, '.1f'):>8} {cell('chunked', 1, '.1f'):>9} "
          f"{m_k:>8.1f} | {ratio('reference', 0):>10} {ratio('chunked', 0):>10} "
          f"{ratio('reference', 1):>10} {ratio('chunked', 1):>10}", flush=True)


if __name__ == "__main__":
    main()
