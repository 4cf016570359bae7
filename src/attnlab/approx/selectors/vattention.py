"""vAttention (Desai et al. 2025, "vAttention: Verified Sparse Attention"): deterministic heavy
hitters plus a uniform sample of the residual keys with importance weights.

For one query, with budget k: a deterministic set I = the first ``sinks`` visible keys (sinks),
the last ones (a local window) and the predicted heavy hitters (here the keys of largest exact
weight: the paper's oracle top-k predictor; ``scores_all``), of ``k - n_s`` keys in all, with
n_s = round(``sample_fraction`` * k) sampled keys. The residual R = visible keys not in I
(|R| = m) is sampled uniformly *without replacement*, n_s' = min(n_s, m) keys T, each with
inclusion probability pi = n_s' / m, and

    N_hat = sum_{j in I} a_j v_j + (m / n_s') sum_{j in T} a_j v_j      (unbiased for sum_j a_j v_j)
    D_hat = sum_{j in I} a_j     + (m / n_s') sum_{j in T} a_j          (unbiased for sum_j a_j)
    o_hat = N_hat / D_hat                                               (self-normalized ratio)

The split of I: sinks = min(``sinks``, (k - n_s) // 4), window = min(``window``, (k - n_s) // 4)
(``window`` None: no cap), the rest heavy hitters. vAttention sizes n_s adaptively from an
(epsilon, delta) bound on the output (a CLT bound on N_hat, D_hat); here n_s is set by the
budget instead (the harness compares at fixed budgets), so no (epsilon, delta) guarantee is
claimed. The estimators are unbiased for every kernel, so every kernel is accepted.
"""

from __future__ import annotations

import torch

from ..._checks import check_int
from .blocks import sinks_and_window, take
from .harness import Context, Picked


def check_fraction(name: str, x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {x!r}")
    return float(x)


def uniform_sample(ctx: Context, pool: torch.Tensor, n: int | torch.Tensor):
    """A uniform subset of ``n`` keys of ``pool`` per row (all where fewer) and its weight
    |pool| / |subset| (1 where the subset is empty)."""
    size = pool.sum(-1)
    n = torch.minimum(torch.as_tensor(n, device=size.device), size)
    chosen = take(ctx.rand(), pool, n)
    return chosen, (size / n.clamp_min(1)).to(ctx.a.dtype)


def vattention(ctx: Context, top_k: int, *, sample_fraction: float = 0.25, sinks: int = 4,
               window: int | None = None) -> Picked:
    """Sinks + window + heavy hitters, uniform importance-weighted tail (module docstring)."""
    frac = check_fraction("sample_fraction", sample_fraction)
    sinks = check_int("sinks", sinks, 0)
    n_s = round(frac * top_k)
    det = top_k - n_s
    n_sink = min(sinks, det // 4)
    n_win = det // 4 if window is None else min(check_int("window", window, 0), det // 4)
    fixed = sinks_and_window(ctx, n_sink, n_win)
    crit = ctx.s if ctx.kernel.exponential else ctx.a
    fixed = fixed | take(crit, ctx.visible & ~fixed, det - fixed.sum(-1))
    sample, weight = uniform_sample(ctx, ctx.visible & ~fixed, n_s)
    coef = torch.where(fixed, ctx.a, torch.where(sample, ctx.a * weight.unsqueeze(-1), 0.0))
    used = fixed | sample
    return Picked(used=used, coef=coef, read=used, scores_all=True)
