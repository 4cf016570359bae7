"""The sdpa backend: torch's own ``scaled_dot_product_attention``, for the softmax kernel only.

attnlab's semantics differ from SDPA's in three places, and this wrapper closes the gaps:
a query with no visible key returns a zero row (SDPA may return NaN), ``attn_mask`` and
``is_causal`` may be combined (SDPA refuses; here the causal triangle is ANDed into the mask),
and masked keys are inert (see ``reference.py``): SDPA adds -inf to the scores a bool
``attn_mask`` hides, and NaN - inf = NaN, so a call with a mask whose keys are not all finite
(padding keys are already zeroed by :func:`~attnlab.backends._common.hide_unseen_keys`; these
are keys hidden from some queries only) runs on the ``chunked`` backend instead, which selects.
The check is ``canonicalize``'s, or one sum over k, or, without autograd, one over SDPA's
output. ``is_causal`` alone goes to SDPA as is: its kernels drop the future keys by selection
(tested on CPU), so no check is made.

Attention dropout is refused (:func:`sdpa_refusal`): SDPA's own dropout draws its mask from
torch's Philox stream, which no other backend reproduces, so the same seed would give different
outputs per backend; ``auto`` routes softmax with dropout to ``chunked``. Double backward raises
(torch's fused SDPA kernels have none): use backend 'reference'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    Problem,
    all_finite,
    causal_visible,
    dropout_refusal,
    first_order_only,
    keys_finite,
    needs_grad,
)
from .chunked import chunked_attention
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
    # A non-finite key some query must not see: chunked. Without autograd and without canonicalize's
    # check (deferred), SDPA's output is checked instead of k (cheaper when decoding).
    check_output = mask is not None and p.finite is None and not needs_grad(p)
    if mask is not None and not check_output and not keys_finite(p):
        return chunked_attention(problem)
    if S == 0 or q.numel() == 0:
        # SDPA's kernels reject empty inputs; the answer (zeros, or nothing) is the reference's.
        return reference_attention(problem)[0]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=p.scale, enable_gqa=G > 1
    )
    if mask is not None:
        out = torch.where(mask.any(dim=-1, keepdim=True), out, 0.0)
        if check_output and not all_finite(out):  # after the zero rows, which SDPA may leave NaN
            return chunked_attention(problem)
    return first_order_only(out.reshape(N, H, G, L, v.shape[-1]), "backend 'sdpa'")
