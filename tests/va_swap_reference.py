"""The va-swap implementation of commit 536064a (before issue 13's speed-up), verbatim apart from
the names: the reference that tests/test_va_swap.py and benchmarks/va_swap.py compare the fast
path with. It searches the same 1-swap neighbourhood with the same screen and the same order,
but refits every row's candidate chunk until the slowest row is done."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.approx.simplex import _TOL, _refit
from attnlab.approx.sparse_layout import (
    Layout,
    SparseApprox,
    _combine,
    _finish,
    gather_values,
    prepare,
    solve_in_chunks,
)
from attnlab.approx.value_aware import _greedy, _line_scores, _pick

__all__ = ["va_swap_reference"]


def va_swap_reference(p: Tensor, v: Tensor, r: int, *, visible: Tensor | None = None,
            return_support: bool = False, max_iter: int = 100, chunk: int = 8) -> SparseApprox:
    """:func:`va_greedy` followed by best-of-chunk 1-swap local search, until no swap improves.

    Each round refits every support minus one slot i exactly (error vector e_i), then ranks all
    swaps (i out, j in) by the two-term upper bound from e_i and discards those whose lower bound
    ``max(0, min(||e_i||, e_i . w_j / ||e_i||))^2`` (a separating hyperplane of the hull of
    S \\ {i}) cannot beat the current error. The rest are refit exactly ``chunk`` at a time,
    best bound first; the best improving swap of a chunk is taken. A row stops when no swap
    improves by more than the tolerance, or after ``max_iter`` swaps.

    Raises:
        TypeError, ValueError: see :func:`attnlab.approx.sparse.prepare`; also ``max_iter`` < 0
            or ``chunk`` < 1.
    """
    if max_iter < 0 or chunk < 1:
        raise ValueError(f"max_iter must be >= 0 and chunk >= 1, got {max_iter} and {chunk}")
    lay = prepare(p, v, r, visible)
    idx, b, out = solve_in_chunks(lay, lambda c: _swap_rows_reference(c, r, max_iter, chunk))
    return _finish(lay, out, idx, b, return_support)


def _swap_rows_reference(lay: Layout, r: int, max_iter: int, chunk: int) -> tuple[Tensor, ...]:
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
        while bool((cand.any(-1) & ~found).any()):
            pid = torch.where(cand, -upper, -torch.inf).topk(min(chunk, cand.shape[-1])).indices
            ok = cand.gather(-1, pid) & ~found.unsqueeze(-1)
            cand = cand.scatter(-1, pid, False)
            i, j = pid // n, pid % n
            sw = slots == i.unsqueeze(-1)  # (G, M, chunk, r)
            wj = gather_values(lay.v, j) - lay.o.unsqueeze(-2)
            Wn = torch.where(sw.unsqueeze(-1), wj.unsqueeze(-2), W.unsqueeze(-3))
            tj = t.flatten(-2).gather(-1, pid).unsqueeze(-1)
            b_rest = bi.gather(-2, i.unsqueeze(-1).expand(*i.shape, r))
            bn, _, e2n = _refit(Wn, torch.where(sw, tj, b_rest * (1 - tj)))
            best, c = torch.where(ok, e2n, torch.inf).min(-1)
            better = best < err2 - tol
            new_idx = idx.scatter(-1, _pick(i, c).unsqueeze(-1), _pick(j, c).unsqueeze(-1))
            idx = torch.where(better[..., None], new_idx, idx)
            W = torch.where(better[..., None, None], _pick(Wn, c), W)
            b = torch.where(better[..., None], _pick(bn, c), b)
            err2 = torch.where(better, best, err2)
            found |= better
        live &= found
        if not bool(live.any()):
            break
    return idx, b, lay.o + _combine(b, W)
