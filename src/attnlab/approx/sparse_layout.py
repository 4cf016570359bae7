"""The layout every r-sparse oracle solves in (:mod:`attnlab.approx.sparse`,
:mod:`attnlab.approx.value_aware`): :func:`prepare`, row chunks and :class:`SparseApprox`.

The problem they solve is stated in :mod:`attnlab.approx.sparse`. Shapes: p (..., n),
v (..., n, D_v) with broadcastable leading dims (values are usually shared by the queries of a
head: v (B, H, 1, n, D_v) with p (B, H, L, n)), visible bool broadcastable to (..., n), True =
the query may see the key. Internally every solver works in one layout, rows (G, M, n) against
values (G, n, D_v), in which shared values are never copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .._checks import check_int

__all__ = [
    "Layout",
    "SparseApprox",
    "argmax_last",
    "gather_values",
    "prepare",
    "project_simplex",
    "row_chunks",
    "solve_in_chunks",
]


@dataclass(frozen=True)
class SparseApprox:
    """An r-sparse approximation of attention outputs.

    Attributes:
        output: (..., D_v) the approximated output ``sum_{j in S} beta_j v_j``.
        support: (..., r) long key indices, or None when not requested; -1 marks an unused slot.
        weights: (..., r) the coefficients beta on ``support`` (0 on unused slots), or None.
    """

    output: Tensor
    support: Tensor | None = None
    weights: Tensor | None = None

    def dense_weights(self, n: int) -> Tensor:
        """The weights scattered into a dense (..., n) tensor (needs ``return_support=True``)."""
        if self.support is None or self.weights is None:
            raise ValueError("dense_weights needs support and weights: pass return_support=True")
        used = self.support >= 0
        dense = self.weights.new_zeros((*self.support.shape[:-1], n))
        return dense.scatter_add(-1, self.support.clamp_min(0), torch.where(used, self.weights, 0))


@dataclass(frozen=True)
class Layout:
    """A validated problem in the solvers' layout: rows (G, M, n) against values (G, n, D_v).

    ``o`` is the exact output ``(p * visible) @ v`` of each row; :meth:`unflatten` maps a
    (G, M, ...) result back to the caller's (..., ...) batch shape.
    """

    p: Tensor
    v: Tensor
    visible: Tensor
    o: Tensor
    batch_shape: tuple[int, ...]
    perm: tuple[int, ...]
    all_visible: bool

    def unflatten(self, x: Tensor) -> Tensor:
        """(G, M, *tail) -> (*batch_shape, *tail)."""
        k = len(self.batch_shape)
        tail = x.shape[2:]
        x = x.reshape(*(self.batch_shape[i] for i in self.perm), *tail)
        inv = [0] * k
        for pos, dim in enumerate(self.perm):
            inv[dim] = pos
        return x.permute(*inv, *range(k, k + len(tail)))


def prepare(p: Tensor, v: Tensor, r: int, visible: Tensor | None) -> Layout:
    """Validate a sparse-approximation call and bring it into the solvers' layout.

    Raises:
        TypeError: p, v or visible is not a tensor; p/v are not both float32 or both float64;
            visible is not bool; r is not an int.
        ValueError: shapes do not match or broadcast, devices differ, p or v has a NaN or inf
            entry, p has a negative entry, r < 1, or r exceeds the number of visible keys of
            some row.
    """
    for name, t in (("p", p), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if p.dtype != v.dtype:
        raise TypeError(f"p and v must have the same dtype, got {p.dtype} and {v.dtype}")
    check_int("r", r, 1)
    if p.ndim < 1 or v.ndim < 2:
        raise ValueError(f"p must be (..., n) and v (..., n, D_v), got {tuple(p.shape)}, "
                         f"{tuple(v.shape)}")
    n = p.shape[-1]
    if v.shape[-2] != n:
        raise ValueError(f"p has n={n} keys but v has {v.shape[-2]} (v must be (..., n, D_v))")
    if p.device != v.device:
        raise ValueError(f"p and v must be on one device, got {p.device} and {v.device}")
    try:
        bs = tuple(torch.broadcast_shapes(p.shape[:-1], v.shape[:-2]))
    except RuntimeError:
        raise ValueError(f"leading dims of p {tuple(p.shape[:-1])} and v {tuple(v.shape[:-2])} "
                         "must broadcast") from None
    all_visible = visible is None
    if visible is None:
        visible = torch.ones((), dtype=torch.bool, device=p.device)
    elif not isinstance(visible, Tensor) or visible.dtype != torch.bool:
        raise TypeError(f"visible must be a bool tensor or None, got "
                        f"{getattr(visible, 'dtype', type(visible).__name__)}")
    elif visible.device != p.device:
        raise ValueError(f"visible must be on {p.device}, got {visible.device}")
    try:
        ok = torch.broadcast_shapes(visible.shape, (*bs, n)) == (*bs, n)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"visible must broadcast to {(*bs, n)}, got {tuple(visible.shape)}")
    for name, t in (("p", p), ("v", v)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
    if bool((p < 0).any()):
        raise ValueError("p must be non-negative (attention weights)")
    vis = visible.expand(*bs, n)
    n_vis = int(vis.sum(-1).min()) if vis.numel() else n
    if r > n_vis:
        raise ValueError(f"r={r} exceeds the number of visible keys of some row ({n_vis})")

    k = len(bs)
    vb = (1,) * (k - (v.ndim - 2)) + tuple(v.shape[:-2])
    shared = [i for i in range(k) if vb[i] == 1 and bs[i] != 1]
    perm = tuple([i for i in range(k) if i not in shared] + shared)
    g = math.prod(vb)
    m = math.prod(bs) // max(g, 1) if g else 0

    def rows(t: Tensor) -> Tensor:
        return t.expand(*bs, n).permute(*perm, k).reshape(g, m, n)

    vv = v.reshape(*vb, *v.shape[-2:]).permute(*perm, k, k + 1).reshape(g, n, v.shape[-1])
    pp, vis = rows(p), rows(vis)
    o = torch.matmul(pp if all_visible else torch.where(vis, pp, 0), vv)
    return Layout(pp, vv, vis, o, bs, perm, all_visible)


def _finish(lay: Layout, out: Tensor, idx: Tensor, w: Tensor, return_support: bool) -> SparseApprox:
    if not return_support:
        return SparseApprox(lay.unflatten(out))
    return SparseApprox(lay.unflatten(out), lay.unflatten(idx), lay.unflatten(w))


def _finish_support(lay: Layout, idx: Tensor, w: Tensor, return_support: bool) -> SparseApprox:
    """:func:`_finish` with the output ``sum_slots w v[idx]`` (slots -1 carry weight 0)."""
    return _finish(lay, _combine(w, gather_values(lay.v, idx)), idx, w, return_support)


def row_chunks(lay: Layout, budget: int = 2**19) -> Iterator[Layout]:
    """Split the rows (the M dim) into pieces of about ``budget`` (row, key) elements: the
    solvers' (rows, n) temporaries then stay in cache, which is several times faster on CPU."""
    g, m, n = lay.p.shape
    step = max(1, budget // max(1, g * n))
    for s in range(0, m, step):
        sl = slice(s, s + step)
        yield replace(lay, p=lay.p[:, sl], visible=lay.visible[:, sl], o=lay.o[:, sl])


def solve_in_chunks(lay: Layout, fn: Callable[[Layout], tuple[Tensor, ...]],
                    budget: int = 2**19) -> tuple[Tensor, ...]:
    """Run ``fn`` (a Layout -> tensors (G, M_chunk, ...)) on row chunks of about ``budget``
    (row, key) elements (see :func:`row_chunks`) and concatenate."""
    parts = [fn(c) for c in row_chunks(lay, budget)]
    return tuple(torch.cat(x, 1) for x in zip(*parts, strict=True))


def argmax_last(x: Tensor) -> Tensor:
    """``x.argmax(-1, keepdim=True)`` (first maximum), two-level when the last dim splits in
    blocks: block maxima by ``amax`` then the winner inside one block (torch's CPU argmax over
    long rows is several times slower than amax)."""
    n = x.shape[-1]
    blk = next((b for b in (128, 64, 32) if n % b == 0 and n >= 4 * b), 0)
    if not blk:
        return x.argmax(-1, keepdim=True)
    xb = x.unflatten(-1, (n // blk, blk))
    which = xb.amax(-1).argmax(-1, keepdim=True)  # (..., 1) block index
    inner = xb.gather(-2, which.unsqueeze(-1).expand(*which.shape, blk)).squeeze(-2)
    return which * blk + inner.argmax(-1, keepdim=True)


def gather_values(v: Tensor, idx: Tensor) -> Tensor:
    """Rows of v (G, n, D_v) at idx (G, M, k) -> (G, M, k, D_v); idx -1 reads row 0."""
    g = torch.arange(v.shape[0], device=v.device).view(-1, 1, 1)
    return v[g, idx.clamp_min(0)]


def _combine(w: Tensor, rows: Tensor) -> Tensor:
    """sum_k w_k rows_k: (G, M, k) x (G, M, k, D_v) -> (G, M, D_v), as a batched matmul."""
    return torch.einsum("gmk,gmkd->gmd", w, rows)


def project_simplex(x: Tensor) -> Tensor:
    """Euclidean projection of each row of x (..., k) onto the probability simplex.

    ``argmin_{b >= 0, sum b = 1} ||b - x||_2`` is ``max(x - theta, 0)`` with theta chosen so the
    result sums to 1: with u = sort(x, descending) and c_j = sum_{i<=j} u_i, theta =
    (c_rho - 1) / rho for the largest rho with u_rho > (c_rho - 1) / rho.
    """
    u = x.sort(dim=-1, descending=True).values
    c = u.cumsum(-1) - 1
    j = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    rho = (u > c / j).sum(-1, keepdim=True).clamp_min(1)
    theta = c.gather(-1, rho - 1) / rho.to(x.dtype)
    return (x - theta).clamp_min(0)
