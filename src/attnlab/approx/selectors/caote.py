"""CAOTE (Goel et al. 2025, "CAOTE: KV Caching through Attention Output Error based Token
Eviction"): rank keys by the exact change of the output when the key alone is dropped.

With alpha_j = a_j / sum_i a_i the normalized weights and o the output, dropping key j and
renormalizing gives o' = (o - alpha_j v_j) / (1 - alpha_j), so

    ||o - o'|| = alpha_j / (1 - alpha_j) * ||o - v_j||          (the CAOTE score)

and the keys of largest score are kept (CAOTE evicts the smallest), the output renormalized over
them. The formula holds for any kernel's renormalized output (eps aside).

- ``caote`` (oracle): the exact o and every value: summary = every key (``scores_all``) and
  every visible value row (n * D_v * itemsize).
- ``caote-est`` (practical): reads the ``ceil(top_k * head_fraction)`` keys of largest weight
  (the head, from exact scores) and estimates o_hat = their renormalized output; the distances
  ||o_hat - v_j|| of the other keys come from a JL sketch c_j = R v_j (R: ``sketch_dim`` x D_v
  Gaussian / sqrt(sketch_dim), seeded by the call's generator), ||R o_hat - c_j||; the rest of
  the budget takes the keys of largest estimated score. Summary: every key (``scores_all``) and
  ``sketch_dim`` numbers per visible key.
"""

from __future__ import annotations

import math

import torch

from ..._checks import check_int
from .blocks import key_bytes, take
from .harness import Context, Picked


def _alpha(ctx: Context):
    z = ctx.a.sum(-1, keepdim=True)
    return ctx.a / torch.where(z > 0, z, 1.0)


def _score(alpha, dist):
    return alpha / (1 - alpha).clamp_min(torch.finfo(alpha.dtype).tiny) * dist


def caote(ctx: Context, top_k: int) -> Picked:
    """Keep the top_k keys by alpha / (1 - alpha) * ||o - v_j|| with the exact o."""
    alpha = _alpha(ctx)
    o = alpha @ ctx.v  # (N, H, G, L, D_v)
    dist = torch.cdist(o, ctx.v.expand(*o.shape[:-2], *ctx.v.shape[-2:]))
    used = take(_score(alpha, dist), ctx.visible, top_k)
    return Picked(used=used, coef=ctx.a, read=used, scores_all=True,
                  summary_bytes=key_bytes(ctx, ctx.v.shape[-1] * ctx.itemsize))


def caote_est(ctx: Context, top_k: int, *, head_fraction: float = 0.5, sketch_dim: int = 8) -> Picked:
    """CAOTE with o estimated from the head and distances from a value sketch."""
    m = check_int("sketch_dim", sketch_dim, 1)
    if not isinstance(head_fraction, (int, float)) or not 0 < head_fraction <= 1:
        raise ValueError(f"head_fraction must be in (0, 1], got {head_fraction!r}")
    alpha = _alpha(ctx)
    head = take(ctx.s if ctx.kernel.exponential else ctx.a, ctx.visible, math.ceil(top_k * head_fraction))
    ah = torch.where(head, ctx.a, 0.0)
    zh = ah.sum(-1, keepdim=True)
    o_hat = (ah @ ctx.v) / torch.where(zh > 0, zh, 1.0)
    Dv = ctx.v.shape[-1]
    R = torch.randn(Dv, m, generator=ctx.generator, dtype=ctx.v.dtype).to(ctx.v.device) / math.sqrt(m)
    dist = torch.cdist(o_hat @ R, (ctx.v @ R).expand(*o_hat.shape[:-2], ctx.v.shape[-2], m))
    rest = take(_score(alpha, dist), ctx.visible & ~head, top_k - head.sum(-1))
    used = head | rest
    return Picked(used=used, coef=ctx.a, read=used, scores_all=True, summary_bytes=key_bytes(ctx, m * ctx.itemsize))
