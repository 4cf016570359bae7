"""MagicPIG (Chen et al. 2025, "MagicPIG: LSH Sampling for Efficient LLM Generation"): SimHash
sampling of keys with importance weights from their collision probability, softmax only.

Every key keeps a code of ``n_tables`` (L) SimHash tables of ``bits`` (K) sign bits,
sign(w . k_j) for Gaussian hyperplanes w (seeded by the call's generator): K * L bits per key,
its summary. A key is *retrieved* when it agrees with the query's code on all K bits of at least
one table. With theta_j the angle between q and k_j, one table collides with probability
(1 - theta_j / pi)^K, so the inclusion probability of key j is

    u_j = 1 - (1 - (1 - theta_j / pi)^K)^L

computed for the retrieved keys (they are loaded). As in MagicPIG, the first ``sinks`` and the
last ``window`` visible keys are kept exactly (at most a quarter of the budget each); the other
b = top_k - (sinks + window) rows of the budget go to the retrieved keys C: all of them when
|C| <= b, else a uniform subset T of b of them, weighted |C| / b (two-stage sampling; each stage
unbiased). With pi_j = u_j (times b / |C| when subsampled):

    N_hat = sum_{fixed} a_j v_j + sum_{j in T} (a_j / pi_j) v_j,   D_hat = the same with 1 for v_j
    o_hat = N_hat / D_hat        (self-normalized importance sampling; N_hat, D_hat unbiased)

Defined for softmax (SimHash collisions track the angle, hence exp(q.k) for similar norms);
other kernels are refused. Summary bytes: K * L / 8 per visible key.
"""

from __future__ import annotations

import math

import torch

from ..._checks import check_int
from .blocks import key_bytes, sinks_and_window, take
from .harness import Context, Picked


def magicpig(ctx: Context, top_k: int, *, bits: int = 6, n_tables: int = 16, sinks: int = 4,
             window: int = 64) -> Picked:
    """SimHash retrieval + importance weights 1 / u_j, self-normalized (module docstring)."""
    K = check_int("bits", bits, 1)
    T = check_int("n_tables", n_tables, 1)
    sinks = check_int("sinks", sinks, 0)
    window = check_int("window", window, 0)
    fixed = sinks_and_window(ctx, min(sinks, top_k // 4), min(window, top_k // 4))
    b = top_k - fixed.sum(-1)
    D = ctx.q.shape[-1]
    W = torch.randn(D, T * K, generator=ctx.generator, dtype=ctx.q.dtype).to(ctx.q.device)
    powers = 2 ** torch.arange(K, device=ctx.q.device)

    def codes(x: torch.Tensor) -> torch.Tensor:  # (..., n, D) -> (..., n, T) K-bit table codes
        return ((x @ W > 0).reshape(*x.shape[:-1], T, K).long() * powers).sum(-1)

    qc, kc = codes(ctx.q).unsqueeze(-2), codes(ctx.k).unsqueeze(-3)  # (.., L, 1, T), (.., 1, S, T)
    hit = (qc == kc).any(-1)  # (N, H, G, L, S): same code in some table
    pool = hit & ctx.visible & ~fixed
    cos = ctx.s / ctx.scale / (ctx.q.norm(dim=-1, keepdim=True) * ctx.k.norm(dim=-1).unsqueeze(-2)).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1, 1))
    u = 1 - (1 - (1 - theta / math.pi) ** K) ** T
    size = pool.sum(-1)
    n = torch.minimum(b, size)
    chosen = take(ctx.rand(), pool, n)
    stage2 = (size / n.clamp_min(1)).to(ctx.a.dtype).unsqueeze(-1)
    coef = torch.where(fixed, ctx.a, torch.where(chosen, ctx.a / u.clamp_min(1e-300) * stage2, 0.0))
    used = fixed | chosen
    return Picked(used=used, coef=coef, read=used, summary_bytes=key_bytes(ctx, K * T / 8))
