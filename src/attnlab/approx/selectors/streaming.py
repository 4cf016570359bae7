"""StreamingLLM (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"):
keep the first ``sinks`` visible keys (the attention sinks) and the most recent visible keys
(a sliding window) that fill the rest of the budget, and renormalize:

    K = first min(sinks, top_k // 2) visible keys  U  last (top_k - |sinks|) visible keys
    o_hat = sum_{j in K} a_j v_j / sum_{j in K} a_j

Value-oblivious and score-oblivious: it reads no summary. Any kernel. The sinks take at most half
of the budget (so a small budget keeps a window), the paper's setting is ``sinks=4``.
"""

from __future__ import annotations

from ..._checks import check_int
from .blocks import sinks_and_window
from .harness import Context, Picked


def streaming_llm(ctx: Context, top_k: int, *, sinks: int = 4) -> Picked:
    """Attention sinks + sliding window (see the module docstring)."""
    sinks = check_int("sinks", sinks, 0)
    n_sinks = min(sinks, top_k // 2)
    used = sinks_and_window(ctx, n_sinks, top_k - n_sinks)
    return Picked(used=used, coef=ctx.a, read=used)
