"""The sdpa backend: torch's own ``scaled_dot_product_attention``, for the softmax kernel only.

attnlab's semantics differ from SDPA's in two places, and this wrapper closes both gaps:
a query with no visible key returns a zero row (SDPA may return NaN), and ``attn_mask`` and
``is_causal`` may be combined (SDPA refuses; here the causal triangle is ANDed into the mask).

Attention dropout is refused (:func:`sdpa_refusal`): SDPA's own dropout draws its mask from
torch's Philox stream, which no other backend reproduces, so the same seed would give different
outputs per backend; ``auto`` routes softmax with dropout to ``chunked``. Double backward raises
(torch's fused SDPA kernels have none): use backend 'reference'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import Problem, causal_visible, dropout_refusal, first_order_only
from .reference import reference_attention


def sdpa_refusal(problem: Problem) -> str | None:
    """Why the sdpa backend refuses ``problem`` (None when it accepts it): dropout."""
    return dropout_refusal("sdpa", problem)


def sdpa_attention(problem: Problem) -> Tensor:
    """Softmax attention on a canonical :class:`Problem` through torch's SDPA.

    Raises:
        ValueError: what :func:`sdpa_refusal` refuses.
    """
    reason = sdpa_refusal(problem)
    if reason is not None:
        raise ValueError(reason)
    p = problem
    N, H, G, L, D = p.q.shape
    S = p.k.shape[-2]
    q = p.q.reshape(N, H * G, L, D)
    k, v = p.k.squeeze(2), p.v.squeeze(2)
    mask, causal = p.mask, p.is_causal
    if mask is not None:
        mask = mask.reshape(mask.shape[0], mask.shape[1] * mask.shape[2], L if mask.shape[3] > 1 else 1,
                            S if mask.shape[4] > 1 else 1)
        if causal:
            mask, causal = mask & causal_visible(0, L, S, q.device), False
    if S == 0 or q.numel() == 0:
        # SDPA's kernels reject empty inputs; the answer (zeros, or nothing) is the reference's.
        return reference_attention(problem)[0]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=p.scale, enable_gqa=G > 1
    )
    if mask is not None:
        out = torch.where(mask.any(dim=-1, keepdim=True), out, 0.0)
    return first_order_only(out.reshape(N, H, G, L, v.shape[-1]), "backend 'sdpa'")
