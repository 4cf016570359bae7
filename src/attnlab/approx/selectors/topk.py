"""Oracle top-k in the harness (Gupta et al. 2021, "Memory-efficient Transformers via Top-k
Attention"): keep the ``top_k`` visible keys of largest weight f(s_j) (softmax: largest s_j),
renormalize over them: ``o_hat = sum_{j in K} a_j v_j / sum_{j in K} a_j``. Any kernel.

It scores every key exactly (``scores_all``). It is the harness's reference; the trainable,
registered approximation is :func:`attnlab.approx.topk.topk_attention` (``method="topk"``), which
gives the same output (a test checks it), so it is not registered twice.
"""

from __future__ import annotations

from .blocks import take
from .harness import Context, Picked


def topk(ctx: Context, top_k: int) -> Picked:
    """The ``top_k`` heaviest visible keys, renormalized (see the module docstring)."""
    crit = ctx.s if ctx.kernel.exponential else ctx.a
    used = take(crit, ctx.visible, top_k)
    return Picked(used=used, coef=ctx.a, read=used, scores_all=True)
