"""CONTRIBUTING.md's worked example: a new approximation in one file.

``window`` attention: query i sees only the keys j with abs(i - j) < ``window`` (local attention).
Registering it with a record is the whole change: ``approximate_attention(method="window")``
works, the test sweep enrols it (it runs, its refusals raise, and at ``window >= max(L, S)`` it
must equal exact attention with its gradients), and ``attnlab approx-error`` can choose it.
"""

from __future__ import annotations

import torch
from torch import Tensor

import attnlab
from attnlab.approx import register_approximation
from attnlab.methods import Budget
from attnlab.problem import AttentionProblem


def window_attention(query: Tensor, key: Tensor, value: Tensor, *, window: int = 16, kernel: str = "softmax",
                     attn_mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                     enable_gqa: bool = False, eps: float = 1e-6) -> Tensor:
    """:func:`attnlab.attention` restricted to the keys within ``window`` positions of each query.

    Raises:
        TypeError, ValueError: ``window`` not an int >= 1; as :func:`attnlab.attention`.
    """
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    L, S = query.shape[-2], key.shape[-2]
    offset = torch.arange(L, device=query.device)[:, None] - torch.arange(S, device=query.device)[None, :]
    band = offset.abs() < window
    mask = band if attn_mask is None else attn_mask & band
    return attnlab.attention(query, key, value, kernel=kernel, attn_mask=mask, is_causal=is_causal, scale=scale,
                             enable_gqa=enable_gqa, eps=eps)


def _exact(problem: AttentionProblem) -> dict:
    """The options under which it is exact attention: a window that covers every key."""
    return {"window": max(problem.q.shape[-2], problem.k.shape[-2], 1)}


register_approximation("window", window_attention, budget=Budget("window", 16), exact_options=_exact,
                       doc="local attention: the keys within `window` positions of the query")
