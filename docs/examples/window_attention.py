"""CONTRIBUTING.md's worked example: a new approximation in one file.

``window`` attention: query i sees only the keys j with abs(i - j) < ``window`` (local attention).
The method is one function of the validated problem (:class:`attnlab.problem.AttentionProblem`,
canonical layout in and out, like a backend); registering it with a record is the whole change:
``approximate_attention(method="window")`` works, ``window_attention(q, k, v, window=4, ...)``
takes :func:`attnlab.attention`'s arguments, the test sweep enrols it (it runs, its refusals
raise, and at ``window >= max(L, S)`` it must equal exact attention with its gradients), and
``attnlab approx-error`` can choose it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from attnlab.approx import register_approximation
from attnlab.backends import select_backend
from attnlab.methods import Budget
from attnlab.problem import AttentionProblem


def window(problem: AttentionProblem, *, window: int = 16) -> Tensor:
    """:func:`attnlab.attention` restricted to the keys within ``window`` positions of each query.

    Raises:
        TypeError, ValueError: ``window`` not an int >= 1; as :func:`attnlab.attention`.
    """
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    L, S, device = problem.q.shape[-2], problem.k.shape[-2], problem.device
    offset = torch.arange(L, device=device)[:, None] - torch.arange(S, device=device)[None, :]
    band = (offset.abs() < window).reshape(1, 1, 1, L, S)  # a mask in the canonical 5-D layout
    banded = replace(problem, mask=band if problem.mask is None else problem.mask & band)
    return select_backend("auto", banded).run(banded)  # (N, H_kv, G, L, D_v), like any backend


def _exact(problem: AttentionProblem) -> dict:
    """The options under which it is exact attention: a window that covers every key."""
    return {"window": max(problem.q.shape[-2], problem.k.shape[-2], 1)}


#: ``window_attention(query, key, value, *, kernel, attn_mask, is_causal, scale, enable_gqa, eps,
#: window=16)``: the registered function users call.
window_attention = register_approximation("window", window, budget=Budget("window", 16), exact_options=_exact,
                                          doc="local attention: the keys within `window` positions of the query")
