"""The reference backend: the definition of attnlab's semantics, in a few readable lines.

Every other backend is a faster way to compute what this function computes::

    s = scale * q @ k^T                          (fp32, or fp64 for fp64 inputs)
    a = f(s), zeroed where a key is not visible  (softmax: exp(s - rowmax) over visible keys)
    p = a / (sum_j a + eps)                      (softmax: no eps; a row with no weight -> p = 0)
    o = p @ v                                    (dropout: o = (p * keep / (1 - dropout_p)) @ v)

``keep`` is the counter-based mask of ``_common.dropout_keep``; returned weights are p, before
dropout.

Masked keys are inert. "Zeroed" is a selection (``torch.where``), never a product with the
mask, so a key hidden from a query (``attn_mask`` False, or a later key under ``is_causal``)
never contributes to that query's output, whatever the key holds (NaN or +-inf included). A key
hidden from every query of its batch element and key/value head (padding) is inert in full: where
any key or value is non-finite, ``canonicalize`` sets such keys' k and v to 0 by selection
(``_common.hide_unseen_keys``), so NaN or +-inf in their keys or values reaches no output and no
gradient (their dk and dv are 0). Not covered: a non-finite value of a key that some query sees
meets a zero weight in ``p @ v`` for the queries it is hidden from (0 * NaN = NaN), and a
non-finite key a query cannot see may still make that query's dq NaN (dq = ds @ k).

It materializes the (L, S) weights, so it can return them, and it is differentiated by
autograd.
"""

from __future__ import annotations

from torch import Tensor

from ._common import Problem, causal_visible, combine_visible, dropout_multiplier, normalizer, tile_weights


def reference_attention(problem: Problem, return_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Attention on a canonical :class:`Problem`; returns (output, weights or None)."""
    dtype = problem.compute_dtype
    q, k, v = (x.to(dtype) for x in (problem.q, problem.k, problem.v))
    s = (q @ k.transpose(-1, -2)) * problem.scale
    L, S = s.shape[-2:]
    causal = causal_visible(0, L, S, s.device) if problem.is_causal else None
    visible = combine_visible(problem.mask, causal)
    a, _ = tile_weights(problem.kernel, s, visible)
    p = a / normalizer(problem.kernel, a.sum(dim=-1, keepdim=True), problem.eps)
    dropped = p
    if problem.dropout_p > 0:
        dropout = (problem.dropout_p, problem.dropout_seed)
        dropped = p * dropout_multiplier(dropout, problem.q.shape, slice(None), slice(None), 0, L, S, p)
    out = (dropped @ v).to(problem.q.dtype)
    return out, (p.to(problem.q.dtype) if return_weights else None)
