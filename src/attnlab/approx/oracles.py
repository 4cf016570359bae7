"""Registry of r-sparse approximation oracles, chosen by name so experiments are config.

Every oracle has one signature::

    solve(p, v, r, *, visible=None, return_support=False) -> SparseApprox

p (..., n) exact attention weights, v (..., n, D_v) values (leading dims broadcast), visible
bool (..., n) (True = may attend). They are analysis oracles: they form the exact output
``o = p^T V`` themselves.

    >>> import torch
    >>> from attnlab.approx.oracles import approximate_output
    >>> g = torch.Generator().manual_seed(0)
    >>> p = torch.softmax(torch.randn(2, 6, generator=g), -1)
    >>> v = torch.randn(6, 3, generator=g)
    >>> approximate_output(p, v, 2, "va-greedy").shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .sparse import SparseApprox, omp, topr, topr_l2
from .value_aware import va_exact, va_greedy, va_swap

__all__ = ["Oracle", "approximate_output", "available_oracles", "get_oracle"]

Oracle = Callable[..., SparseApprox]

_ORACLES: dict[str, Oracle] = {
    "topr": topr,
    "topr-l2": topr_l2,
    "va-greedy": va_greedy,
    "va-swap": va_swap,
    "va-exact": va_exact,
    "omp": omp,
}


def available_oracles() -> list[str]:
    """Names of the registered oracles."""
    return list(_ORACLES)


def get_oracle(name: str) -> Oracle:
    """The solver registered under ``name``.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no oracle of that name.
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a str, got {type(name).__name__}")
    try:
        return _ORACLES[name]
    except KeyError:
        raise ValueError(f"method must be one of {available_oracles()}, got {name!r}") from None


def approximate_output(p: Tensor, v: Tensor, r: int, method: str, *,
                       visible: Tensor | None = None) -> Tensor:
    """The r-sparse approximation (..., D_v) of ``o = p^T V`` by the oracle ``method``.

    Raises:
        TypeError, ValueError: unknown ``method``, or see
            :func:`attnlab.approx.sparse.prepare` for the inputs.
    """
    return get_oracle(method)(p, v, r, visible=visible).output
