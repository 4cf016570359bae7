"""Chunked top-k attention (Gupta et al. 2021, "Memory-efficient Transformers via Top-k Attention").

Each query keeps only the ``top_k`` keys of largest kernel *weight* among the keys it may see,
and normalizes over those alone (shapes: see :mod:`attnlab.functional`)::

    K_i = the top_k visible keys j of largest f(s_ij)        (fewer if fewer are visible)
    o_i = sum_{j in K_i} f(s_ij) v_j / (sum_{j in K_i} f(s_ij) + eps)   (softmax: max-shift, no eps)

Selection is by weight f(s), not by score s. For softmax the two agree (exp is increasing);
for expressive attention they do not: f(s) = s^2 / (1 + s^2) is large for large |s|, so an
antiparallel key (s << 0) is among the heaviest. A key that is masked out (``attn_mask`` or
``is_causal``) is never selected. With ``top_k >= S`` this is exact attention.

Queries are processed in chunks, so the forward holds one (chunk, S) score tile at a time:
O(chunk * S) extra memory. A custom autograd Function saves q, k, v, the output, one
normalizer per query and the kept indices (L x top_k integers) and recomputes in backward,
which visits only the kept keys: O(L * top_k * D) work and O(L * top_k) memory (dk and dv are
products with sparse (S, L) matrices of L * top_k entries). With p_j = f(s_j) / Z over kept keys
and Δ = dO . o per query::

    dv_j += p_j dO,   ds_j = f'(s_j) (dO . v_j - Δ) / Z   (softmax: p_j (dO . v_j - Δ)),
    dq = scale * sum_j ds_j k_j,   dk_j += scale * ds_j q
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._checks import check_int
from ..backends import fresh, normalizer, tile_visible, tile_weights
from ..kernels import Kernel
from ..problem import AttentionProblem
from ..signature import attention_signature

__all__ = ["DEFAULT_TILE_ELEMENTS", "topk", "topk_attention"]

#: Score elements in one forward tile when ``chunk_size`` is not given (fp32: 8 MiB).
DEFAULT_TILE_ELEMENTS = 1 << 21

_ALL = slice(None)


def _chunks(L: int, S: int, causal: bool, chunk: int):
    """Yield (q_start, q_end, k_end): under ``is_causal`` a chunk only visits the keys it sees."""
    for i0 in range(0, L, chunk):
        i1 = min(L, i0 + chunk)
        yield i0, i1, (min(S, i1) if causal else S)


def _flat_rows(idx: Tensor, S: int) -> Tensor:
    """Row numbers into a (N * H * S, ·) view of k or v for kept indices idx (N, H, G, c, k)."""
    N, H = idx.shape[:2]
    base = torch.arange(N * H, device=idx.device).reshape(N, H, 1, 1, 1) * S
    return idx.clamp(min=0) + base


def _select(kernel: Kernel, s: Tensor, visible: Tensor | None, top_k: int) -> Tensor:
    """Indices of the ``top_k`` heaviest visible keys per row; -1 where a row has fewer."""
    crit = s if kernel.exponential else kernel.weights(s)
    if visible is not None:
        crit = crit.masked_fill(~visible, float("-inf"))
    vals, idx = torch.topk(crit, min(top_k, s.shape[-1]), dim=-1)
    return torch.where(vals > float("-inf"), idx, -1)


def _sparse_mm(index: Tensor, values: Tensor, size: tuple[int, int], dense: Tensor) -> Tensor:
    """(sparse matrix with entries ``values`` at ``index``, duplicates summed) @ dense."""
    matrix = torch.sparse_coo_tensor(index, values.reshape(-1), size, check_invariants=False)
    return torch.sparse.mm(matrix, dense)


class _TopKAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, kernel: Kernel, causal, scale, eps, top_k, chunk):
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        N, H, G, L, _ = q.shape
        S, Dv = v.shape[-2:]
        qs = q.to(dtype) * scale
        kc = k.to(dtype)
        v_rows = v.to(dtype).reshape(N * H * S, Dv)
        out = fresh((N, H, G, L, Dv), q, dtype)
        z = fresh((N, H, G, L, 1), q, dtype)
        index_dtype = torch.int32 if N * H * S < 2**31 else torch.int64
        kept = torch.full((N, H, G, L, min(top_k, S)), -1, dtype=index_dtype, device=q.device)
        for i0, i1, k_end in _chunks(L, S, causal, chunk):
            s = qs[..., i0:i1, :] @ kc[..., :k_end, :].transpose(-1, -2)
            visible = tile_visible(mask, causal, _ALL, _ALL, i0, i1, k_end, q.device)
            idx = _select(kernel, s, visible, top_k)
            valid = idx >= 0
            a, _ = tile_weights(kernel, s.gather(-1, idx.clamp(min=0)), valid)
            zt = normalizer(kernel, a.sum(dim=-1, keepdim=True), eps)
            v_kept = v_rows[_flat_rows(idx, S)]  # (N, H, G, c, k, Dv)
            out[..., i0:i1, :] = ((a / zt).unsqueeze(-2) @ v_kept).squeeze(-2)
            z[..., i0:i1, :] = zt
            kept[..., i0:i1, : idx.shape[-1]] = idx.to(index_dtype)
        ctx.save_for_backward(q, k, v, out, z, kept)
        ctx.config = (kernel, causal, scale, chunk)
        return out.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, z, kept = ctx.saved_tensors
        kernel, causal, scale, chunk = ctx.config
        dtype = out.dtype
        N, H, G, L, D = q.shape
        S, Dv = v.shape[-2:]
        qs = q.to(dtype) * scale
        k_rows = k.to(dtype).reshape(N * H * S, D)
        v_rows = v.to(dtype).reshape(N * H * S, Dv)
        d_out = grad_out.to(dtype)
        delta = (d_out * out).sum(dim=-1, keepdim=True)
        dq = torch.zeros_like(qs)
        p_kept = torch.zeros(kept.shape, dtype=dtype, device=q.device)
        ds_kept = torch.zeros_like(p_kept)
        for i0, i1, _ in _chunks(L, S, causal, chunk):
            idx = kept[..., i0:i1, :].long()
            valid = idx >= 0
            rows = _flat_rows(idx, S)
            k_kept, v_kept = k_rows[rows], v_rows[rows]  # (N, H, G, c, k, D|Dv)
            qt, dot = qs[..., i0:i1, :], d_out[..., i0:i1, :]
            s = (k_kept @ qt.unsqueeze(-1)).squeeze(-1)
            a, _ = tile_weights(kernel, s, valid)
            zt = z[..., i0:i1, :]
            p = a / zt
            dp = (v_kept @ dot.unsqueeze(-1)).squeeze(-1) - delta[..., i0:i1, :]
            if kernel.exponential:
                ds = p * dp
            else:
                ds = torch.where(valid, kernel.weights_vjp(s, dp / zt), 0.0)
            dq[..., i0:i1, :] = (ds.unsqueeze(-2) @ k_kept).squeeze(-2)
            p_kept[..., i0:i1, :], ds_kept[..., i0:i1, :] = p, ds
        # dv = P^T dO and dk = dS^T (scale q), with P and dS sparse (N H S, N H G L): a sparse
        # product is far faster than index_add_ on CPU, and needs O(L * top_k) memory.
        rows = _flat_rows(kept.long(), S).reshape(-1)
        cols = torch.arange(N * H * G * L, device=q.device).repeat_interleave(kept.shape[-1])
        index, size = torch.stack([rows, cols]), (N * H * S, N * H * G * L)
        dv = _sparse_mm(index, p_kept, size, d_out.reshape(-1, Dv))
        dk = _sparse_mm(index, ds_kept, size, qs.reshape(-1, D))
        dq = (dq * scale).to(q.dtype)
        dk = dk.reshape(k.shape).to(k.dtype)
        dv = dv.reshape(v.shape).to(v.dtype)
        return dq, dk, dv, None, None, None, None, None, None, None


def topk(problem: AttentionProblem, *, top_k: int = 32, chunk_size: int | None = None) -> Tensor:
    """Top-k attention under any kernel, chunked over queries, trainable (see the module doc).

    The core ``topk(problem, ...)`` takes an :class:`~attnlab.problem.AttentionProblem` and
    returns (N, H_kv, G, L, D_v); :func:`topk_attention` takes :func:`attnlab.attention`'s arguments.

    Args:
        query, key, value, kernel, attn_mask, is_causal, scale, enable_gqa, eps: as in
            :func:`attnlab.attention` (same validation, same layout, same normalization).
        top_k: keys kept per query (>= 1; default 32, whatever S is: pass the budget you
            mean); a query that sees fewer keeps all it sees, and ``top_k >= S`` gives exact
            attention.
        chunk_size: queries per chunk (>= 1); by default about ``DEFAULT_TILE_ELEMENTS`` scores
            per chunk across batch and heads. Sets the extra memory, not the result.

    Returns:
        (B..., H, L, D_v) in the input dtype.

    Raises:
        TypeError: ``top_k`` or ``chunk_size`` is not an int, or as :func:`attnlab.attention`.
        ValueError: ``top_k`` or ``chunk_size`` < 1, or as :func:`attnlab.attention`.

    Example:
        >>> import torch, attnlab
        >>> from attnlab.approx.topk import topk_attention
        >>> q, k, v = torch.randn(3, 1, 2, 10, 4, dtype=torch.float64).unbind(0)
        >>> exact = attnlab.attention(q, k, v, kernel="expressive")
        >>> torch.allclose(topk_attention(q, k, v, top_k=10, kernel="expressive"), exact)
        True
    """
    top_k = check_int("top_k", top_k, 1)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, 1)
    p = problem
    N, H, G, L, _ = p.q.shape
    S = p.k.shape[-2]
    chunk = chunk_size or max(1, min(L, DEFAULT_TILE_ELEMENTS // max(1, N * H * G * S)))
    return _TopKAttention.apply(p.q, p.k, p.v, p.mask, p.kernel, p.is_causal, p.scale, p.eps, top_k, chunk)


topk_attention = attention_signature(topk, name="topk_attention")
