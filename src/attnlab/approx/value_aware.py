"""Value-aware r-sparse approximation (Gupta & Berant, EMNLP 2021): solvers of

    min_{beta in simplex, |supp beta| <= r} ||o - sum_j beta_j v_j||^2,   o = sum_j p_j v_j.

With w_j = v_j - o and sum beta = 1 the error is ||sum_j beta_j w_j||^2 = beta^T M beta,
M = W_S W_S^T: the squared distance from the origin to the convex hull of {w_j : j in S}.
Shapes and errors are those of :func:`attnlab.approx.sparse.prepare`; support slots are -1
where unused, weights are 0 there. All solvers are batched over every query at once; their exact
fits on the simplex are in :mod:`attnlab.approx.simplex`.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from .._checks import check_int
from .simplex import _TOL, _exact_support, _refit, simplex_least_squares
from .sparse_layout import (
    Layout,
    SparseApprox,
    _combine,
    _finish,
    _finish_support,
    argmax_last,
    gather_values,
    prepare,
    solve_in_chunks,
)

__all__ = ["EXACT_CHUNK", "EXACT_MAX_SUBSETS", "simplex_least_squares", "va_exact", "va_greedy", "va_swap"]

EXACT_MAX_SUBSETS = 100_000
"""va_exact refuses instances with more than this many candidate supports per query."""

EXACT_CHUNK = 4096
"""va_exact solves at most this many candidate supports at a time."""

# va_greedy at r >= D_v + 1 reduces p's support exactly (Caratheodory) where its relative error
# ||o - o_hat|| / ||o|| is above this
_EXACT_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def _line_scores(e: Tensor, err2: Tensor, lay: Layout, wn2: Tensor) -> tuple[Tensor, Tensor]:
    """For every key j: the best step t in [0, 1] from the error vector e (G, M, ..., D_v)
    towards w_j = v_j - o, and the resulting reduction of the squared error (both
    (G, M, ..., n)): with num = ||e||^2 - e.w_j and den = ||w_j - e||^2, t = clip(num / den)
    and the reduction is t (2 num - t den). Written with in-place ops: it is the hot loop."""
    g, d = e.shape[0], e.shape[-1]
    shape = (*e.shape[:-1], wn2.shape[-1])
    o = lay.o.view(g, lay.o.shape[1], *[1] * (e.ndim - 3), d)
    eo = (e * o).sum(-1, keepdim=True).reshape(g, -1, 1)
    num = torch.baddbmm(eo, e.reshape(g, -1, d), lay.v.transpose(-1, -2), alpha=-1).view(shape)
    num += err2.unsqueeze(-1)  # num = ||e||^2 - e . w_j
    den = (wn2 - err2.unsqueeze(-1)).add_(num, alpha=2)  # ||w_j||^2 - 2 e.w_j + ||e||^2
    den.clamp_min_(torch.finfo(den.dtype).tiny)
    t = torch.div(num, den).clamp_(0, 1)
    return t, torch.addcmul(num, t, den, value=-0.5).mul_(t).mul_(2)


def _pick(x: Tensor, c: Tensor) -> Tensor:
    """x (G, M, chunk, ...) at chunk index c (G, M) -> (G, M, ...)."""
    c = c.view(*c.shape, 1, *[1] * (x.ndim - 3)).expand(*c.shape, 1, *x.shape[3:])
    return x.gather(2, c).squeeze(2)


def _greedy(lay: Layout, r: int) -> tuple[Tensor, ...]:
    V, o, vis = lay.v, lay.o, lay.visible
    g, m, d = o.shape
    vn2 = (V * V).sum(-1).unsqueeze(1)
    wn2 = vn2 - 2 * (o @ V.transpose(-1, -2)) + (o * o).sum(-1, keepdim=True)  # ||v_j - o||^2
    j = torch.where(vis, wn2, torch.inf).argmin(-1, keepdim=True)  # nearest value: r = 1 optimum
    idx = j.new_full((g, m, r), -1)
    idx[..., :1] = j
    W = o.new_zeros(g, m, r, d)
    W[..., 0, :] = gather_values(V, j).squeeze(-2) - o
    b = o.new_zeros(g, m, r)
    b[..., 0] = 1.0
    e = W[..., 0, :]
    penalty = torch.where(vis, 0.0, -torch.inf).to(o.dtype).scatter_(-1, j, -torch.inf)
    err2 = (e * e).sum(-1)
    for k in range(1, r):
        t, red = _line_scores(e, err2, lay, wn2)
        j = argmax_last(red.add_(penalty))
        tj = t.gather(-1, j)
        idx[..., k : k + 1] = j
        penalty.scatter_(-1, j, -torch.inf)
        W[..., k, :] = gather_values(V, j).squeeze(-2) - o
        b0 = torch.cat([b[..., :k] * (1 - tj), tj], -1)
        b[..., : k + 1], e, err2 = _refit(W[..., : k + 1, :], b0)
    # safeguard: the top-r support of p, refit exactly, where it beats the greedy support
    pr, ir = torch.where(vis, lay.p, -1.0).topk(r, dim=-1)
    Wr = gather_values(V, ir) - o.unsqueeze(-2)
    z = pr.sum(-1, keepdim=True)
    br, _, e2r = _refit(Wr, torch.where(z > 0, pr / torch.where(z > 0, z, 1.0), 1.0 / r))
    use = (e2r < err2).unsqueeze(-1)
    idx, b, err2 = torch.where(use, ir, idx), torch.where(use, br, b), torch.minimum(e2r, err2)
    W = torch.where(use.unsqueeze(-1), Wr, W)
    if r >= d + 1:
        # Caratheodory: some D_v + 1 keys reproduce o exactly; where greedy missed, reduce p's
        # support to them (the oracle knows p) and keep that where it is better
        scale = (o * o).sum(-1) + torch.finfo(o.dtype).eps * torch.where(vis, wn2, 0).amax(-1)
        miss = err2 > _EXACT_RTOL[o.dtype] ** 2 * scale
        if bool(miss.any()):
            ci, cb, cW, ce2 = _exact_support(lay, miss, r)
            better = ce2 < err2[miss]
            idx[miss] = torch.where(better[:, None], ci, idx[miss])
            b[miss] = torch.where(better[:, None], cb, b[miss])
            W[miss] = torch.where(better[:, None, None], cW, W[miss])
            err2[miss] = torch.minimum(ce2, err2[miss])
    return idx, b, W, err2, wn2


def va_greedy(p: Tensor, v: Tensor, r: int, *, visible: Tensor | None = None,
              return_support: bool = False) -> SparseApprox:
    """Greedy forward selection with an exact simplex refit after every addition.

    Step 1 takes the value nearest to o (the exact r = 1 optimum). Step k scores each unused
    visible key j by the error after the best two-term move ``beta <- (1 - t) beta + t e_j``,
    t in [0, 1] (one matmul for all keys), adds the best key, and refits beta exactly on the
    new support with :func:`simplex_least_squares`. Then the top-r support of p is refit
    exactly too and kept where it is better, so va-greedy is never worse than ``topr`` or
    ``topr-l2`` (their weights are feasible on that support). Last, at r >= D_v + 1, rows whose
    relative error ``||o - o_hat|| / ||o||`` is still above 1e-9 (float64; 1e-4 in float32)
    get Caratheodory's reduction of p's support to at most D_v + 1 keys (see
    :func:`attnlab.approx.simplex._caratheodory`: exact up to rounding, O(n) small QR steps per such row), kept where
    it is better: so at r >= D_v + 1 va-greedy reproduces o (to that tolerance) whenever o is a
    convex combination of the visible values, i.e. the visible p sum to 1. Returns r keys (some
    may have weight 0).

    Raises:
        TypeError, ValueError: see :func:`attnlab.approx.sparse.prepare`.
    """
    lay = prepare(p, v, r, visible)

    def rows(c: Layout) -> tuple[Tensor, ...]:
        idx, b, W, _, _ = _greedy(c, r)
        return idx, b, c.o + _combine(b, W)

    idx, b, out = solve_in_chunks(lay, rows)
    return _finish(lay, out, idx, b, return_support)


def va_swap(p: Tensor, v: Tensor, r: int, *, visible: Tensor | None = None,
            return_support: bool = False, max_iter: int = 100, chunk: int = 8) -> SparseApprox:
    """:func:`va_greedy` followed by best-of-chunk 1-swap local search, until no swap improves.

    Each round refits every support minus one slot i exactly (error vector e_i), then ranks all
    swaps (i out, j in) by the two-term upper bound from e_i and discards those whose lower bound
    ``max(0, min(||e_i||, e_i . w_j / ||e_i||))^2`` (a separating hyperplane of the hull of
    S \\ {i}) cannot beat the current error. The rest are refit exactly ``chunk`` at a time,
    best bound first; the best improving swap of a chunk is taken. A row stops when no swap
    improves by more than the tolerance, or after ``max_iter`` swaps.

    Batched over all queries: each step refits the next 1, 2, 4, ... chunks of every row that
    is still searching, in one batch (rows that found their swap or ran out of candidates drop
    out), and takes the best swap of the first chunk that improves: the same choice as one chunk
    at a time, in log2 of the steps. At r = 2 the line point is the exact fit (S \\ {i} is one
    point), so no refit is needed.

    Raises:
        TypeError, ValueError: see :func:`attnlab.approx.sparse.prepare`; also ``max_iter`` < 0
            or ``chunk`` < 1.
    """
    if max_iter < 0 or chunk < 1:
        raise ValueError(f"max_iter must be >= 0 and chunk >= 1, got {max_iter} and {chunk}")
    lay = prepare(p, v, r, visible)
    idx, b, out = solve_in_chunks(lay, lambda c: _swap_rows(c, r, max_iter, chunk))
    return _finish(lay, out, idx, b, return_support)


def _swap_rows(lay: Layout, r: int, max_iter: int, chunk: int) -> tuple[Tensor, ...]:
    idx, b, W, err2, wn2 = _greedy(lay, r)
    n = wn2.shape[-1]
    tol = _TOL[b.dtype] * torch.where(lay.visible, wn2, 0).amax(-1)
    eye = torch.eye(r, dtype=torch.bool, device=b.device)
    slots = torch.arange(r, device=b.device)
    live = torch.full_like(err2, r > 1, dtype=torch.bool)  # r = 1: greedy is already optimal
    for _ in range(max_iter if r > 1 else 0):
        # exact fits without slot i, for every i: (G, M, r [left out], r [slots])
        b_out = torch.where(eye, 0.0, b.unsqueeze(-2))
        mass = b_out.sum(-1, keepdim=True)
        uniform = (~eye).to(b.dtype) / (r - 1)
        b_out = torch.where(mass > 0, b_out / torch.where(mass > 0, mass, 1.0), uniform)
        Wi = W.unsqueeze(-3).expand(*W.shape[:2], r, r, W.shape[-1])
        bi, ei, e2i = b_out, W.new_zeros(Wi.shape[:-2] + Wi.shape[-1:]), err2.new_zeros(b_out.shape[:-1])
        if not bool(live.all()):  # refit only the rows still searching (the others have no candidates)
            bi = bi.clone()
            bi[live], ei[live], e2i[live] = _refit(Wi[live], b_out[live], ~eye.expand(b_out[live].shape))
        else:
            bi, ei, e2i = _refit(Wi, b_out, ~eye.expand(b_out.shape))
        t, red = _line_scores(ei, e2i, lay, wn2.unsqueeze(-2))
        eo = (ei * lay.o.unsqueeze(-2)).sum(-1, keepdim=True)
        ew = torch.baddbmm(eo.flatten(1, 2), ei.flatten(1, 2), lay.v.transpose(-1, -2), alpha=-1)
        ew = -ew.view(red.shape)  # e_i . w_j
        norm = e2i.sqrt().unsqueeze(-1)
        bound = torch.minimum(norm, ew / torch.where(norm > 0, norm, 1.0)).clamp_min(0) ** 2
        lower = torch.where(norm > 0, bound, 0.0)  # no swap can beat this (hull of S \ {i})
        taken = torch.zeros_like(lay.visible).scatter(-1, idx, True)
        cand = (lay.visible & ~taken).unsqueeze(-2) & (lower < (err2 - tol)[..., None, None])
        cand = (cand & live[..., None, None]).flatten(-2)
        upper = (e2i.unsqueeze(-1) - red).flatten(-2)
        found = torch.zeros_like(live)
        V, o = lay.v, lay.o
        width = chunk
        while True:
            # only the rows that still have candidates and no improving swap yet (compacted: a
            # row that is done costs nothing while the others search on)
            gi, mi = (cand.any(-1) & ~found).nonzero(as_tuple=True)
            if len(gi) == 0:
                break
            # the next `width` candidates by bound, i.e. the next width / chunk chunks of the
            # chunk-at-a-time search, refit in one batch; width doubles, so a row that must
            # refit all its k candidates (to prove it is a local optimum) takes log2(k / chunk)
            # steps, not k / chunk
            c_a, up_a = cand[gi, mi], upper[gi, mi]
            pid = torch.where(c_a, -up_a, -torch.inf).topk(min(width, c_a.shape[-1])).indices
            width *= 2
            ok = c_a.gather(-1, pid)
            # at r = 2 the bound is the exact error: if the best one does not improve, none does
            cand[gi, mi] = False if r == 2 else c_a.scatter(-1, pid, False)
            i, j = pid // n, pid % n
            sw = slots == i.unsqueeze(-1)  # (R', width, r)
            wj = V[gi[:, None], j] - o[gi, mi].unsqueeze(-2)
            Wn = torch.where(sw.unsqueeze(-1), wj.unsqueeze(-2), W[gi, mi].unsqueeze(-3))
            tj = t[gi, mi].flatten(-2).gather(-1, pid).unsqueeze(-1)
            b_rest = bi[gi, mi].gather(-2, i.unsqueeze(-1).expand(*i.shape, r))
            bn = torch.where(sw, tj, b_rest * (1 - tj))  # the best point on the line from e_i to w_j
            if r == 2:  # S \ {i} is one point: the hull is that segment, the line point is the exact fit
                e2n = up_a.gather(-1, pid).clamp_min(0)
            else:
                bn, _, e2n = _refit(Wn, bn)
            improves = ok & (e2n < (err2[gi, mi] - tol[gi, mi]).unsqueeze(-1))
            better = improves.any(-1)
            if not bool(better.any()):
                continue
            # as chunk at a time: the best swap of the first chunk that holds an improving one
            block = torch.arange(pid.shape[-1], device=pid.device) // chunk
            first = block[improves.to(torch.uint8).argmax(-1)]
            best, c = torch.where(ok & (block == first.unsqueeze(-1)), e2n, torch.inf).min(-1)
            gi, mi, c, best = gi[better], mi[better], c[better], best[better]
            rows = torch.arange(len(gi), device=c.device)
            idx[gi, mi, i[better][rows, c]] = j[better][rows, c]
            W[gi, mi] = Wn[better][rows, c]
            b[gi, mi] = bn[better][rows, c]
            err2[gi, mi] = best
            found[gi, mi] = True
        live &= found
        if not bool(live.any()):
            break
    return idx, b, lay.o + _combine(b, W)


def va_exact(p: Tensor, v: Tensor, r: int, *, visible: Tensor | None = None,
             return_support: bool = False, max_subsets: int = EXACT_MAX_SUBSETS) -> SparseApprox:
    """The certified optimum, by exhaustive enumeration with an exact simplex fit per support.

    Pruning by Caratheodory's theorem: every point of a convex hull in R^{D_v} is a convex
    combination of at most D_v + 1 of its points, so only supports of size
    s = min(r, D_v + 1) are enumerated, C(n, s) of them per query (the other slots stay -1).
    Supports holding an invisible key are skipped.

    The supports are generated lazily (``itertools.combinations``) and solved in chunks of at
    most :data:`EXACT_CHUNK` supports, fewer for large batches, so memory is bounded by the
    chunk and time by ``max_subsets``, which is checked (with ``math.comb``) before any work.

    Raises:
        TypeError, ValueError: see :func:`attnlab.approx.sparse.prepare`; ``max_subsets`` not
            an int >= 1.
        ValueError: C(n, s) > ``max_subsets`` (default :data:`EXACT_MAX_SUBSETS` = 100000).
    """
    check_int("max_subsets", max_subsets, 1)
    lay = prepare(p, v, r, visible)
    (g, m, d), n = lay.o.shape, lay.p.shape[-1]
    s = min(r, d + 1)
    count = math.comb(n, s)
    if count > max_subsets:
        raise ValueError(f"va-exact would enumerate C(n={n}, min(r, D_v + 1)={s}) = {count} "
                         f"supports per query, above max_subsets={max_subsets}; use va-swap")
    best = lay.o.new_full((g, m), torch.inf)
    idx = torch.full((g, m, r), -1, dtype=torch.long, device=lay.o.device)
    b = lay.o.new_zeros(g, m, r)
    step = max(1, min(EXACT_CHUNK, 2**20 // max(1, g * m * s * (s + d))))
    supports = itertools.combinations(range(n), s)
    while chunk := list(itertools.islice(supports, step)):
        sub = torch.tensor(chunk, dtype=torch.long, device=lay.o.device).expand(g, m, -1, s)
        valid = lay.visible.gather(-1, sub.flatten(-2)).view(sub.shape).all(-1)
        W = gather_values(lay.v, sub.flatten(-2)).view(*sub.shape, d) - lay.o[:, :, None, None]
        bs, _, e2 = _refit(W, torch.full(sub.shape, 1.0 / s, dtype=W.dtype, device=W.device))
        e2, c = torch.where(valid, e2, torch.inf).min(-1)
        better = e2 < best
        best = torch.where(better, e2, best)
        idx[..., :s] = torch.where(better[..., None], _pick(sub, c), idx[..., :s])
        b[..., :s] = torch.where(better[..., None], _pick(bs, c), b[..., :s])
    return _finish_support(lay, idx, b, return_support)
