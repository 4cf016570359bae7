"""Metrics for attention approximations and attention weight distributions.

Shapes: outputs O (..., L, D_v) (any leading dims; the last dim is the output vector of one
query), weights p (..., n) over n keys with an optional bool ``visible`` (..., n)
(True = the query may see the key), broadcastable to p. Weights are expected to be zero off
``visible`` and to sum to 1 over it (rows of an attention matrix); masked entries are ignored.

    >>> import torch
    >>> p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    >>> entropy(p)
    tensor([0.6931, 0.0000])
    >>> skewness(p, visible=torch.tensor([[True, True, False], [True, True, True]]))
    tensor([0., 1.])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_int

__all__ = [
    "entropy",
    "skewness",
    "top_r_mass",
    "value_aware_error",
    "value_oblivious_error",
]


def _float(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least one dim (..., n), got a scalar")
    return x


def _pair(a_name: str, a: object, b_name: str, b: object) -> tuple[Tensor, Tensor]:
    a, b = _float(a_name, a), _float(b_name, b)
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def _mask(p: Tensor, visible: Tensor | None) -> Tensor | None:
    if visible is None:
        return None
    if not isinstance(visible, Tensor) or visible.dtype != torch.bool:
        raise TypeError(f"visible must be a bool tensor or None, got "
                        f"{getattr(visible, 'dtype', type(visible).__name__)}")
    try:
        ok = torch.broadcast_shapes(visible.shape, p.shape) == p.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"visible must broadcast to p's shape {tuple(p.shape)}, got "
                         f"{tuple(visible.shape)}")
    return visible


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 / 0 = 0 (and x / 0 = inf for x > 0)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0),
                       torch.where(num > 0, torch.inf, 0.0))


def value_aware_error(out: Tensor, out_hat: Tensor, *, per_query: bool = False) -> Tensor:
    """Relative output error ``||O - O_hat||_F / ||O||_F`` over all queries (a scalar), or with
    ``per_query=True`` ``||o - o_hat||_2 / ||o||_2`` per query (shape ``out.shape[:-1]``).
    0 / 0 is 0 (an exactly reproduced zero output).

    Raises:
        TypeError: an argument is not a floating-point tensor.
        ValueError: the shapes differ.
    """
    out, out_hat = _pair("out", out, "out_hat", out_hat)
    diff = (out - out_hat).double()
    if per_query:
        return _ratio(diff.norm(dim=-1), out.double().norm(dim=-1)).to(out.dtype)
    return _ratio(diff.norm(), out.double().norm()).to(out.dtype)


def value_oblivious_error(p: Tensor, p_hat: Tensor, *, ord: float = 1.0,
                          per_query: bool = False) -> Tensor:
    """Error on the weights: ``||p - p_hat||_ord`` per query (row), averaged over queries.

    The default ``ord=1`` is twice the total-variation distance between the two weight
    distributions, in [0, 2]; ``ord=2`` is the Euclidean distance that ``topr-l2`` minimizes.
    With ``per_query=True`` returns the per-row norms (shape ``p.shape[:-1]``).

    Raises:
        TypeError: p or p_hat is not a floating-point tensor.
        ValueError: the shapes differ or ord < 1.
    """
    p, p_hat = _pair("p", p, "p_hat", p_hat)
    if not isinstance(ord, int | float) or isinstance(ord, bool) or not ord >= 1:
        raise ValueError(f"ord must be a number >= 1 (a norm), got {ord!r}")
    err = torch.linalg.vector_norm(p - p_hat, ord=ord, dim=-1)
    return err if per_query else err.mean()


def top_r_mass(p: Tensor, r: int, *, visible: Tensor | None = None) -> Tensor:
    """The mass of the r largest visible weights of each row, shape ``p.shape[:-1]`` (a row
    with fewer than r visible keys returns its whole visible mass).

    Raises:
        TypeError: p is not a floating-point tensor, r not an int, visible not bool.
        ValueError: r < 1 or r > n, or visible does not broadcast to p.
    """
    p = _float("p", p)
    vis = _mask(p, visible)
    check_int("r", r, 1, p.shape[-1])
    if vis is not None:
        p = torch.where(vis, p, 0.0)
    return p.topk(r, dim=-1).values.sum(-1)


def entropy(p: Tensor, *, visible: Tensor | None = None) -> Tensor:
    """Shannon entropy ``H(p) = -sum_j p_j log p_j`` (natural log, 0 log 0 = 0) over the
    visible keys of each row, shape ``p.shape[:-1]``.

    Raises:
        TypeError: p is not a floating-point tensor, visible not bool.
        ValueError: visible does not broadcast to p.
    """
    p = _float("p", p)
    vis = _mask(p, visible)
    h = -torch.special.xlogy(p, p)
    if vis is not None:
        h = torch.where(vis, h, 0.0)
    return h.sum(-1)


def skewness(p: Tensor, *, visible: Tensor | None = None) -> Tensor:
    """Normalized entropy deficit ``1 - H(p) / log(n_visible)`` of each row, in [0, 1]:
    0 for uniform weights, 1 for one-hot weights (and for rows with at most one visible key).

    Chosen over the top-r mass because it needs no choice of r and is comparable across rows
    that see different numbers of keys (causal prefixes): dividing by log(n_visible), the
    largest possible entropy, removes the dependence on length.

    Raises:
        TypeError, ValueError: as :func:`entropy`.
    """
    h = entropy(p, visible=visible)
    n = p.shape[-1] if visible is None else torch.broadcast_to(visible, p.shape).sum(-1)
    log_n = torch.log(torch.as_tensor(n, dtype=p.dtype, device=p.device))
    if visible is None and n <= 1:
        return torch.ones_like(h)
    return torch.where(log_n > 0, 1 - h / torch.where(log_n > 0, log_n, 1.0), 1.0)

