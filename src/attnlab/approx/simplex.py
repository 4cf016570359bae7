"""Exact fits on the probability simplex, shared by the value-aware solvers
(:mod:`attnlab.approx.value_aware`) and the va-select selector.

- :func:`simplex_least_squares`: ``argmin_b b^T M b`` over the simplex, a batched primal
  active-set method; :func:`_refit` applies it to the slots of a support (W = values - o).
- :func:`_caratheodory`: Caratheodory's exact reduction of ``o = sum_j p_j v_j`` to at most
  D_v + 1 keys; :func:`_exact_support` turns it into an r-slot support of a :class:`Layout`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sparse_layout import Layout

__all__ = ["simplex_least_squares"]

_RIDGE = {torch.float64: 1e-13, torch.float32: 1e-6}  # relative to max diag(M)
_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}  # optimality tolerance, same scale


def _spd_inverse_apply(A: Tensor, a: Tensor, ridge: Tensor) -> Tensor:
    """x = A^{-1} a for a batch of small SPD matrices A (R, k, k); a row whose Cholesky fails
    (A numerically not PD) is retried with 1e3 times the ridge on the diagonal."""
    L, info = torch.linalg.cholesky_ex(A)
    bad = info != 0
    if bool(bad.any()):
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        L2, _ = torch.linalg.cholesky_ex(A + 1e3 * ridge[:, None, None] * eye)
        L = torch.where(bad[:, None, None], L2, L)
    return torch.cholesky_solve(a.unsqueeze(-1), L).squeeze(-1)


def simplex_least_squares(M: Tensor, b: Tensor, allowed: Tensor | None = None,
                          max_iter: int | None = None) -> Tensor:
    """Exact ``argmin_b b^T M b`` over the probability simplex (b = 0 off ``allowed``).

    A primal active-set method from the feasible start ``b`` (R, k), batched over R rows.
    On the free set F it solves the equality-constrained problem in closed form,
    ``z_F = (M_FF + lambda I)^{-1} 1 / (1^T (M_FF + lambda I)^{-1} 1)`` (lambda = 1e-13 max diag M
    in float64, 1e-6 in float32: it keeps affinely dependent values solvable and changes the
    squared error by at most lambda). If z >= 0 it moves there and frees the fixed slot with the
    most negative multiplier ``(M z)_i - z^T M z`` (KKT: all >= 0 means optimal); otherwise it
    steps towards z until a weight hits 0 and fixes that slot. Rows leave the loop when optimal.
    """
    R, k, _ = M.shape
    allowed = torch.ones_like(b, dtype=torch.bool) if allowed is None else allowed
    eye = torch.eye(k, dtype=M.dtype, device=M.device)
    largest = M.diagonal(dim1=-2, dim2=-1).amax(-1)
    scale = largest.clamp_min(torch.finfo(M.dtype).tiny)
    ridge, tol = _RIDGE[M.dtype] * scale, _TOL[M.dtype] * scale
    b = b.clone()
    free = (b > 0) & allowed
    # M = 0 (every candidate value equals o, e.g. repeated tokens): every feasible b has zero
    # error and is optimal; solving would divide by a zero ridge.
    act = torch.arange(R, device=M.device)[largest > 0]
    for _ in range(max_iter or 4 * k + 20):
        if len(act) == 0:
            break
        Ma, ba, fa, ra, ta = M[act], b[act], free[act], ridge[act], tol[act]
        A = torch.where(fa[:, :, None] & fa[:, None, :], Ma + ra[:, None, None] * eye, eye)
        x = _spd_inverse_apply(A, fa.to(M.dtype), ra)
        z = x / (x * fa).sum(-1, keepdim=True)
        neg = fa & (z < 0)
        feas = ~neg.any(-1)
        grad = (Ma @ z.unsqueeze(-1)).squeeze(-1)
        lam = grad - (z * grad).sum(-1, keepdim=True)
        cand = allowed[act] & ~fa & (lam < -ta[:, None]) & feas[:, None]
        enter = torch.where(cand, lam, torch.inf).argmin(-1)
        ratio = torch.where(neg, ba / (ba - z), torch.inf)
        t, leave = ratio.min(-1)
        step = (ba + t.clamp(max=1)[:, None] * (z - ba)).clamp_min(0)
        step = step.scatter(-1, leave[:, None], 0.0)
        step = step / step.sum(-1, keepdim=True)
        rows = torch.arange(len(act), device=M.device)
        b[act] = torch.where(feas[:, None], z.clamp_min(0), step)
        fa = fa.clone()
        fa[rows, enter] |= cand.any(-1)
        fa[rows, leave] &= feas
        free[act] = fa
        act = act[~feas | cand.any(-1)]
        if len(act) == 0:
            break
    return b


def _refit(W: Tensor, b0: Tensor, allowed: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Exact simplex fit on the slots of W (..., k, D_v) from feasible b0 (..., k).

    Returns (b, e, err2): weights, error vector e = b^T W and ||e||^2."""
    k = W.shape[-2]
    M = W @ W.transpose(-1, -2)
    flat = None if allowed is None else allowed.reshape(-1, k)
    b = simplex_least_squares(M.reshape(-1, k, k), b0.reshape(-1, k), flat).view(b0.shape)
    e = torch.einsum("...k,...kd->...d", b, W)
    return b, e, (e * e).sum(-1)


def _caratheodory(p: Tensor, vals: Tensor, o: Tensor) -> tuple[Tensor, Tensor]:
    """Caratheodory's reduction of ``o = sum_j p_j v_j`` to at most D_v + 1 keys, exactly.

    p (R, n) non-negative weights (0 = key not used), vals (R, n, D_v) the values, o (R, D_v).
    Keys enter one at a time into D_v + 1 slots holding weights beta with
    ``sum beta_s v_s = sum_{entered j} p_j v_j`` (and the same total weight). When the slots are
    full, the D_v + 2 points (slots and the new key) are affinely dependent: a null vector c of
    ``[w_1 .. w_{D+2}; 1 .. 1]`` (w = v - o; the last column of a complete QR of its transpose)
    gives ``beta - t c`` with the same sums for every t; t = min_{c_j > 0} beta_j / c_j keeps
    beta >= 0 and zeroes one point, which leaves. Returns the slots' keys (R, D_v + 1), -1 where
    a row used fewer keys, and the weights beta / sum beta (R, D_v + 1)."""
    R, n, d = vals.shape
    k = d + 1
    idx = torch.full((R, k), -1, dtype=torch.long, device=p.device)
    b = p.new_zeros(R, k)
    W = p.new_zeros(R, k, d)
    filled = torch.zeros(R, dtype=torch.long, device=p.device)
    ones = p.new_ones(1, k + 1, 1)
    for j in range(n):
        pj = p[:, j]
        use = pj > 0
        free = use & (filled < k)
        if bool(free.any()):
            rf, slot = free.nonzero().squeeze(-1), filled[free]
            idx[rf, slot], b[rf, slot], W[rf, slot] = j, pj[rf], vals[rf, j] - o[rf]
            filled[rf] += 1
        full = use & ~free
        if not bool(full.any()):
            continue
        rf = full.nonzero().squeeze(-1)
        Wa = torch.cat([W[rf], (vals[rf, j] - o[rf]).unsqueeze(-2)], -2)  # (R', k + 1, d)
        ba = torch.cat([b[rf], pj[rf, None]], -1)
        Q, _ = torch.linalg.qr(torch.cat([Wa, ones.expand(len(rf), -1, -1)], -1), mode="complete")
        c = Q[..., -1]  # (R', k + 1): sum_j c_j w_j = 0 and sum_j c_j = 0
        t, out = torch.where(c > 0, ba / torch.where(c > 0, c, 1.0), torch.inf).min(-1)
        bn = (ba - t[:, None] * c).clamp_min(0)
        gone = torch.arange(k + 1, device=p.device) == out[:, None]
        bn = torch.where(gone, 0.0, bn)
        # the new key takes the slot of the point that left (nothing moves if it was the new key)
        into = gone[:, :k]
        idx[rf] = torch.where(into, j, idx[rf])
        W[rf] = torch.where(into[..., None], Wa[:, k : k + 1], Wa[:, :k])
        b[rf] = torch.where(into, bn[:, k : k + 1], bn[:, :k])
    z = b.sum(-1, keepdim=True)
    return idx, b / torch.where(z > 0, z, 1.0)


def _exact_support(lay: Layout, rows: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For the rows ``rows`` (bool (G, M)), r >= D_v + 1: the Caratheodory support of p (at most
    D_v + 1 keys), refit exactly, its other slots filled with unused visible keys of weight 0.
    Returns idx (R', r), b (R', r), W (R', r, D_v) and the squared errors (R',)."""
    g, m, _ = lay.o.shape
    group = torch.arange(g, device=lay.o.device)[:, None].expand(g, m)[rows]
    vis = lay.visible.expand(g, m, -1)[rows]
    p = torch.where(vis, lay.p[rows], 0.0)
    o = lay.o[rows]
    ci, cb = _caratheodory(p, lay.v[group], o)
    k = ci.shape[-1]
    idx = torch.cat([ci, ci.new_full((len(ci), r - k), -1)], -1)
    b = torch.cat([cb, cb.new_zeros(len(cb), r - k)], -1)
    # fill unused slots (-1) with distinct visible keys not in the support (there are enough:
    # every row sees >= r keys), so that every slot names a key as _greedy's supports do
    empty = idx < 0
    taken = torch.zeros_like(vis).scatter(-1, idx.clamp_min(0), ~empty)
    spare = torch.where(vis & ~taken, p, -1.0).topk(r, dim=-1).indices
    rank = (empty.cumsum(-1) - 1).clamp_min(0)
    idx = torch.where(empty, spare.gather(-1, rank), idx)
    W = lay.v[group[:, None], idx] - o.unsqueeze(-2)
    e = torch.einsum("rk,rkd->rd", b, W)
    bf, _, e2f = _refit(W, b)  # the optimum on the support, but its ridge costs up to ~lambda
    keep = (e * e).sum(-1) <= e2f  # the reduction's own weights are exact up to rounding
    return idx, torch.where(keep[:, None], b, bf), W, torch.where(keep, (e * e).sum(-1), e2f)


def _project_simplex(y: Tensor) -> Tensor:
    """Euclidean projection of each row of y (..., k) onto the probability simplex (sort-based:
    x = max(y - theta, 0) with theta from the largest prefix whose shifted entries stay positive)."""
    u = y.sort(-1, descending=True).values
    css = u.cumsum(-1) - 1
    ind = torch.arange(1, y.shape[-1] + 1, device=y.device, dtype=y.dtype)
    rho = ((u - css / ind) > 0).sum(-1, keepdim=True).clamp_min(1)
    theta = css.gather(-1, rho - 1) / rho.to(y.dtype)
    return (y - theta).clamp_min(0)


def _pg_refit(W: Tensor, b0: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """``iters`` accelerated projected-gradient steps (FISTA; one momentum schedule for the batch,
    and a row whose objective rose restarts from its best point) on min ||b^T W||^2 over the
    simplex from feasible b0; a fixed-cost stand-in for :func:`_refit`.

    The step is 1 / (2 lambda_max(W^T W)), lambda_max from power iteration. Each iteration
    costs O(k D_v) per row. Returns (b, e, err2) as :func:`_refit`, and never returns a b worse
    than b0."""
    G = W.transpose(-1, -2) @ W  # (..., D_v, D_v)
    x = torch.ones(*G.shape[:-1], 1, dtype=W.dtype, device=W.device)
    for _ in range(12):
        x = G @ x
        x = x / x.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny)
    lam = (x.transpose(-1, -2) @ G @ x).squeeze(-1) * 1.05 + torch.finfo(W.dtype).tiny  # (..., 1)
    b = b0
    e = torch.einsum("...k,...kd->...d", b, W)
    f = (e * e).sum(-1)
    y, t = b, 1.0
    for _ in range(iters):
        ey = torch.einsum("...k,...kd->...d", y, W)
        grad = torch.einsum("...kd,...d->...k", W, ey)  # half the gradient
        bn = _project_simplex(y - grad / lam)
        en = torch.einsum("...k,...kd->...d", bn, W)
        fn = (en * en).sum(-1)
        worse = fn > f
        tn = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = torch.where(worse.unsqueeze(-1), b, bn + (t - 1) / tn * (bn - b))  # restart where it rose
        keep = worse.unsqueeze(-1)
        b, e, f = torch.where(keep, b, bn), torch.where(keep, e, en), torch.where(worse, f, fn)
        t = tn
    return b, e, f
