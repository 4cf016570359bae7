"""H2O (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference"):
keep a recent window and the heavy hitters, the keys with the largest attention accumulated over
the previous queries, and renormalize.

What is implemented (the idealized H2O score, the one the paper's analysis uses): for query i,
with p_{i'j} = a_{i'j} / sum_l a_{i'l} the exact normalized weights of query i' of the same call,

    H_i(j) = sum_{i' < i} p_{i'j}       (queries before i; keys i' may see; 0 for the first query)
    K = last ``recent`` visible keys  U  the (top_k - |recent|) visible keys of largest H_i(j)
    o_hat = sum_{j in K} a_ij v_j / sum_{j in K} a_ij

``recent`` defaults to top_k // 2 (the paper's half heavy, half recent split). The paper's
streaming algorithm accumulates the attention of its own sparse cache and evicts for good; here
the score comes from exact attention of the earlier queries, so H2O here is an upper bound on
the streaming algorithm's accuracy. Ties (e.g. the first query, which has no history) go to the
earliest key. In decode (the last query) the history is every earlier query of the sequence.
Summary: one float32 accumulator per visible key. Any kernel.
"""

from __future__ import annotations

import torch

from ..._checks import check_int
from .blocks import key_bytes, sinks_and_window, take
from .harness import Context, Picked


def h2o(ctx: Context, top_k: int, *, recent: int | None = None) -> Picked:
    """Heavy hitters by accumulated attention + a recent window (see the module docstring)."""
    w = top_k // 2 if recent is None else min(check_int("recent", recent, 0), top_k)
    z = ctx.a.sum(-1, keepdim=True)
    p = ctx.a / torch.where(z > 0, z, 1.0)
    acc = p.cumsum(-2) - p  # sum over i' < i
    window = sinks_and_window(ctx, 0, w)
    used = window | take(acc, ctx.visible & ~window, top_k - w)
    return Picked(used=used, coef=ctx.a, read=used, summary_bytes=key_bytes(ctx, 4.0))
