"""What a sparse selector costs per query against what top-k attention itself costs (issue 14).

Decode setting: one query per (batch, head) against a KV cache of S keys, float32, in one process
on the same inputs. For each cache length S and budget k it times, per query (median of
``--repeat`` calls):

- ``score``: the exact scores and kernel weights of every key (what oracle top-k, CAOTE and
  va-select all need; the harness's :class:`Context`);
- ``select``: each method's own work on that context (:func:`timed_select`'s clock);
- ``read``: attending over the k gathered rows (gather k keys and values, score, softmax, sum);
- ``dense``: exact attention over all S keys (``attnlab.attention``, backend ``sdpa``).

and prints ``total = score + select + read`` per method with its ratio to top-k's total, and the
selector's own time against reading its budget. A method with a ``summarize`` hook (va-select: the
per-head PCA of the values and every key's 8-bit coefficients) builds its per-key summaries apart:
a KV cache computes them once, when each key is written, so they are not in ``select``; the
``build/key`` column shows that time per key written (the whole cache's build divided by its
keys; a cache that keeps the basis and quantizes each new key's coefficients pays about this
once per key).

    .venv/bin/python benchmarks/selector_cost.py [--lengths 128 512 2048 8192] [--budgets 8 32]
        [--dim 64] [--heads 32] [--batch 4] [--methods topk caote-est va-select] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial

import torch

from attnlab.approx.selectors import SELECTORS
from attnlab.approx.selectors.harness import _context
from attnlab.functional import attention
from attnlab.kernels import get_kernel
from attnlab.studies.sparse import _attend_rows


def median_seconds(fn, repeat: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_length(a: argparse.Namespace, S: int, kern) -> None:
    """Print the rows of cache length ``S``."""
    n_q = a.batch * a.heads
    g = torch.Generator().manual_seed(a.seed + S)
    q = torch.randn(a.batch, a.heads, 1, a.dim, generator=g)
    k = torch.randn(a.batch, a.heads, S, a.dim, generator=g)
    # values with a few dominant directions, as trained heads have, plus noise
    basis = torch.randn(a.batch, a.heads, 4, a.dim, generator=g)
    v = torch.randn(a.batch, a.heads, S, 4, generator=g) @ basis + 0.3 * torch.randn(
        a.batch, a.heads, S, a.dim, generator=g)
    scale = a.dim ** -0.5
    make_ctx = partial(_context, q, k, v, kern, None, False, None, False, 1e-6, torch.Generator(), None)
    t_score = median_seconds(make_ctx, a.repeat) / n_q
    t_dense = median_seconds(partial(attention, q, k, v, backend="sdpa"), a.repeat) / n_q
    ctx = make_ctx()[0]
    for b in a.budgets:
        base = None
        for m in a.methods:
            entry = SELECTORS[m]
            opts = {} if entry.summarize is None else {"summary": entry.summarize(ctx)}
            t_build = median_seconds(partial(entry.summarize, ctx), a.repeat) / (n_q * S) if opts else 0.0
            t_sel = median_seconds(partial(entry.fn, ctx, b, **opts), a.repeat) / n_q
            picked = entry.fn(ctx, b, **opts)
            idx = torch.where(picked.used, picked.coef + 1, 0.0).topk(min(b, S), -1).indices
            idx = idx.reshape(a.batch, a.heads, 1, -1)
            t_read = median_seconds(partial(_attend_rows, q, k, v, idx, scale), a.repeat) / n_q
            total = t_score + t_sel + t_read
            base = total if m == "topk" else base
            sk = f"{t_build * 1e6:9.3f}" if opts else f"{'':9}"
            print(f"{S:6d} {b:4d} {m:12} {t_score * 1e6:8.1f} {t_sel * 1e6:8.1f} {t_read * 1e6:7.1f} "
                  f"{total * 1e6:8.1f} {total / base:7.2f} {t_sel / t_read:8.1f} {sk} {t_dense * 1e6:8.1f}",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048, 8192])
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--dim", type=int, default=64, help="head dim D = D_v")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=["topk", "caote-est", "va-select"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    unknown = [m for m in a.methods if m not in SELECTORS]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {sorted(SELECTORS)}")
    if "topk" not in a.methods:
        a.methods.insert(0, "topk")
    kern = get_kernel("softmax")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; decode: {a.batch} x {a.heads} queries "
          f"of dim {a.dim}, float32; microseconds per query (median of {a.repeat})")
    print(f"{'S':>6} {'k':>4} {'method':12} {'score':>8} {'select':>8} {'read':>7} {'total':>8} {'x topk':>7} "
          f"{'sel/read':>8} {'build/key':>9} {'dense':>8}")
    for S in a.lengths:
        one_length(a, S, kern)
    return 0


if __name__ == "__main__":
    sys.exit(main())
