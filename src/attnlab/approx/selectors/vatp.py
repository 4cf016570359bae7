"""VATP (Guo et al. 2024, "Attention Score is not All You Need for Token Importance Indicator in
KV Cache Reduction: Value Also Matters"): token importance = attention score x ||v_j||_1.

    I_j = a_j * ||v_j||_1,     K = the top_k visible keys of largest I_j,
    o_hat = sum_{j in K} a_j v_j / sum_{j in K} a_j

The score is the current query's exact weight (as oracle top-k uses; the paper applies the
factor to H2O's accumulated score as well). Summary: the exact scores of every key
(``scores_all``) and one float32 value norm per visible key. Any kernel.
"""

from __future__ import annotations

from .blocks import key_bytes, take
from .harness import Context, Picked


def vatp(ctx: Context, top_k: int) -> Picked:
    """Top-k by attention weight x ||v||_1 (see the module docstring)."""
    score = ctx.a * ctx.v.abs().sum(-1).unsqueeze(-2)
    used = take(score, ctx.visible, top_k)
    return Picked(used=used, coef=ctx.a, read=used, summary_bytes=key_bytes(ctx, 4.0), scores_all=True)
