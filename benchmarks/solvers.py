"""Throughput of the batched ``omp`` and ``va-greedy`` oracles next to scikit-learn's
``orthogonal_mp_gram`` on attention-shaped problems, and ``va-greedy`` on a whole layer.

    .venv/bin/python benchmarks/solvers.py [--threads N] [--queries-sklearn 64]

Inputs: p = softmax of random scores (B=1, H=8, L queries, n keys), values V (B, H, 1, n, 64)
shared by the queries of a head; float64 for the comparison (sklearn's dtype), one run.
scikit-learn solves query by query (its own loop over the targets of one Gram matrix per
head); it is timed on the first ``--queries-sklearn`` queries of every head and reported
per query. The torch solvers run all queries at once, after one untimed warm-up call (the
first call of a process pays one-time allocator and thread-pool costs), best of ``--repeats``.
Machines are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from attnlab.approx.sparse import omp
from attnlab.approx.value_aware import va_greedy


def _problem(L: int, n: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(1, 8, L, n, generator=g, dtype=dtype) * 2.0, -1)
    v = torch.randn(1, 8, 1, n, d, generator=g, dtype=dtype)
    return p, v


def _clock(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _sklearn(p: torch.Tensor, v: torch.Tensor, r: int, q: int) -> tuple[float, np.ndarray]:
    from sklearn.linear_model import orthogonal_mp_gram

    heads = v.shape[1]
    coefs, total = [], 0.0
    for h in range(heads):
        vh = v[0, h, 0].numpy()
        gram = vh @ vh.T
        xy = vh @ (p[0, h, :q] @ v[0, h, 0]).numpy().T  # (n, q) = V o for q queries
        t = time.perf_counter()
        coefs.append(orthogonal_mp_gram(gram, xy, n_nonzero_coefs=r).T)
        total += time.perf_counter() - t
    return heads * q / total, np.stack(coefs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--queries", type=int, default=512, help="queries per head for torch")
    ap.add_argument("--queries-sklearn", type=int, default=64, help="queries per head, sklearn")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per torch solver (best)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import sklearn

    print(f"torch {torch.__version__}, sklearn {sklearn.__version__}, device: CPU "
          f"({platform.processor() or platform.machine()}), torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'n':>5} {'r':>3} | {'sklearn q/s':>11} | {'omp q/s':>9} {'x sklearn':>9} "
          f"{'max|coef diff|':>14} | {'va-greedy q/s':>13} {'x sklearn':>9}")
    warm_p, warm_v = _problem(64, 512, 64, torch.float64)
    omp(warm_p, warm_v, 8)
    va_greedy(warm_p, warm_v, 8)
    for n in (512, 1024):
        p, v = _problem(args.queries, n, 64, torch.float64)
        for r in (8, 16, 32):
            sk_qps, sk_coef = _sklearn(p, v, r, args.queries_sklearn)
            res = omp(p, v, r, return_support=True)
            t_omp = _clock(lambda p=p, v=v, r=r: omp(p, v, r), args.repeats)
            q = p.shape[1] * p.shape[2]
            dense = res.dense_weights(n)[0, :, : args.queries_sklearn].numpy()
            diff = float(np.abs(dense - sk_coef).max())
            t_va = _clock(lambda p=p, v=v, r=r: va_greedy(p, v, r), args.repeats)
            print(f"{n:>5} {r:>3} | {sk_qps:>11.0f} | {q / t_omp:>9.0f} {q / t_omp / sk_qps:>9.0f} "
                  f"{diff:>14.1e} | {q / t_va:>13.0f} {q / t_va / sk_qps:>9.1f}")

    print("\nva-greedy on a whole layer: B=1, H=8, L=1024, n=1024, D_v=64, r=16, one run")
    for dtype in (torch.float32, torch.float64):
        p, v = _problem(1024, 1024, 64, dtype, seed=1)
        t_full = _clock(lambda p=p, v=v: va_greedy(p, v, 16))
        vis = torch.ones(1024, 1024, dtype=torch.bool).tril()[15:]  # rows that see >= 16 keys
        g = torch.Generator().manual_seed(2)
        s = torch.randn(1, 8, 1009, 1024, generator=g, dtype=dtype)
        pc = torch.softmax(s.masked_fill(~vis, -torch.inf), -1)
        t_causal = _clock(lambda pc=pc, v=v, vis=vis: va_greedy(pc, v, 16, visible=vis))
        print(f"  {dtype!s:>13}: non-causal (all 1024 keys visible) {t_full:.2f} s; "
              f"causal (queries 15..1023, prefix masks) {t_causal:.2f} s")


if __name__ == "__main__":
    main()
