"""r-sparse approximations of attention outputs: the value-oblivious solvers (``topr``,
``topr-l2``) and ``omp``; the value-aware ones are in :mod:`attnlab.approx.value_aware`.

For one query with exact weights p over n keys, values V (n x D_v) and a visibility mask, the
exact output is ``o = sum_{j visible} p_j v_j``. An r-sparse approximation keeps at most r visible
keys S and weights beta_S and returns ``o_hat = sum_{j in S} beta_j v_j``.

The shapes of p, v and ``visible``, and the layout every solver works in, are those of
:func:`attnlab.approx.sparse_layout.prepare` (:class:`SparseApprox`, :func:`prepare` and
:func:`project_simplex` are re-exported here).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sparse_layout import (
    Layout,
    SparseApprox,
    _finish_support,
    argmax_last,
    gather_values,
    prepare,
    project_simplex,
    solve_in_chunks,
)

__all__ = ["SparseApprox", "omp", "prepare", "project_simplex", "topr", "topr_l2"]


def _top(lay: Layout, r: int) -> tuple[Tensor, Tensor]:
    score = torch.where(lay.visible, lay.p, -1.0)  # p >= 0, so visible keys always win
    return score.topk(r, dim=-1)


def topr(p: Tensor, v: Tensor, r: int, *, visible: Tensor | None = None,
         return_support: bool = False) -> SparseApprox:
    """Value-oblivious top-r (top-k attention): keep the r largest visible p_j and renormalize,
    ``beta_S = p_S / sum p_S`` (a row whose top-r mass is 0 gets zero weights).

    Raises:
        TypeError, ValueError: see :func:`prepare`.
    """
    lay = prepare(p, v, r, visible)
    val, idx = _top(lay, r)
    z = val.sum(-1, keepdim=True)
    return _finish_support(lay, idx, val / torch.where(z > 0, z, 1.0), return_support)


def topr_l2(p: Tensor, v: Tensor, r: int, *, visible: Tensor | None = None,
            return_support: bool = False) -> SparseApprox:
    """Value-oblivious top-r with ``beta_S = project_simplex(p_S)``: the r-sparse point of the
    simplex nearest to p in L2 (it shifts all kept weights by one constant instead of scaling).

    Raises:
        TypeError, ValueError: see :func:`prepare`.
    """
    lay = prepare(p, v, r, visible)
    val, idx = _top(lay, r)
    return _finish_support(lay, idx, project_simplex(val), return_support)


def omp(p: Tensor, v: Tensor, r: int, *, visible: Tensor | None = None,
        return_support: bool = False) -> SparseApprox:
    """Orthogonal matching pursuit with free coefficients, batched over all rows (Batch-OMP).

    With the Gram matrix G = V V^T and alpha^0 = V o, step k picks
    ``j = argmax_j |alpha_j|`` (alpha = V o - G_{:,S} gamma: correlation of each value with the
    residual, values not normalized), appends j to S, extends the Cholesky factor
    ``L L^T = G_SS`` by the row ``w = L^{-1} G_{S,j}``, ``L_kk = sqrt(G_jj - ||w||^2)``, and
    refits ``gamma = G_SS^{-1} (V o)_S``. As in scikit-learn's ``orthogonal_mp_gram``, a row
    stops early (its remaining slots are -1 with weight 0) when the best |alpha_j|^2 is below the
    dtype's machine epsilon, when j is already in S, or when ``L_kk^2`` is below it.
    Implementation: with U = L^{-1} V_S (orthonormal rows) and y = L^{-1} (V o)_S, the Gram
    column enters as ``w = L^{-1} G_{S,j} = U v_j``, y grows by one entry per step, and alpha is
    updated by ``alpha -= y_k V u_k``; gamma = L^{-T} y is solved once at the end. No n x n Gram
    matrix is formed per query. Invisible keys are never selected.

    Raises:
        TypeError, ValueError: see :func:`prepare`.
    """
    lay = prepare(p, v, r, visible)
    # omp's per-row temporaries are small next to va-greedy's: bigger chunks (fewer, larger
    # GEMMs) measured ~15% faster here (benchmarks/solvers.py).
    idx, gamma = solve_in_chunks(lay, lambda c: _omp_rows(c, r), budget=2**21)
    return _finish_support(lay, idx, gamma, return_support)


def _omp_rows(lay: Layout, r: int) -> tuple[Tensor, Tensor]:
    vals, o, vis = lay.v, lay.o, lay.visible
    g, m, d = o.shape
    tiny = torch.finfo(o.dtype).eps
    vt = vals.transpose(-1, -2)
    vn2 = (vals * vals).sum(-1).unsqueeze(1)  # (G, 1, n)
    alpha = torch.matmul(o, vt)  # (G, M, n) = V o
    idx = torch.full((g, m, r), -1, dtype=torch.long, device=o.device)
    L = torch.zeros(g, m, r, r, dtype=o.dtype, device=o.device)
    u = o.new_zeros(g, m, r, d)
    y = o.new_zeros(g, m, r)
    live = torch.ones(g, m, dtype=torch.bool, device=o.device)
    hidden = None if lay.all_visible else ~vis
    score = torch.empty_like(alpha)
    for k in range(r):
        torch.abs(alpha, out=score)
        if hidden is not None:
            score.masked_fill_(hidden, -1.0)
        j = argmax_last(score).squeeze(-1)
        best = score.gather(-1, j.unsqueeze(-1)).squeeze(-1)
        again = (idx[..., :k] == j.unsqueeze(-1)).any(-1)
        live = live & ~again & (best * best >= tiny)
        vj = gather_values(vals, j.unsqueeze(-1)).squeeze(-2)  # (G, M, D_v)
        w = torch.einsum("gmkd,gmd->gmk", u[..., :k, :], vj)  # U v_j
        lkk2 = vn2.expand(g, m, -1).gather(-1, j.unsqueeze(-1)).squeeze(-1) - (w * w).sum(-1)
        live = live & (lkk2 > tiny)
        lkk = torch.where(live, lkk2, 1.0).sqrt()
        uk = (vj - torch.einsum("gmk,gmkd->gmd", w, u[..., :k, :])) / lkk.unsqueeze(-1)
        xy = (o * vj).sum(-1)  # (V o)_j
        yk = (xy - (w * y[..., :k]).sum(-1)) / lkk
        L[..., k, :k] = torch.where(live.unsqueeze(-1), w, 0.0)
        L[..., k, k] = lkk
        u[..., k, :] = torch.where(live.unsqueeze(-1), uk, 0.0)
        y[..., k] = torch.where(live, yk, 0.0)
        idx[..., k] = torch.where(live, j, -1)
        alpha.baddbmm_(y[..., k : k + 1] * u[..., k, :], vt, alpha=-1)
    gamma = torch.linalg.solve_triangular(L.transpose(-1, -2), y.unsqueeze(-1), upper=True)
    return idx, gamma.squeeze(-1)
