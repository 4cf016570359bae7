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
from typing import Any

import torch
from torch import Tensor

from .._checks import check_int, check_registration
from ..functional import attention
from ..methods import Budget, MethodRecord
from ..problem import visibility
from ..registry import Registry
from .sparse import SparseApprox, omp, topr, topr_l2
from .value_aware import va_exact, va_greedy, va_swap

__all__ = ["FAMILIES", "Oracle", "approximate_output", "available_oracles", "get_oracle", "get_oracle_record",
           "oracle_attention", "oracle_family", "register_oracle"]

Oracle = Callable[..., SparseApprox]

#: What an oracle approximates: ``value-aware`` (o itself, weights on the simplex: its error is
#: at most top-r's on every query), ``value-oblivious`` (the weights p), ``unconstrained`` (o with
#: free coefficients).
FAMILIES = ("value-aware", "value-oblivious", "unconstrained")

_ORACLES: Registry[MethodRecord] = Registry("oracle", arg="method", entry="solve", entry_type=MethodRecord)
_FAMILY: dict[str, str] = {}


def register_oracle(name: str, solve: Oracle, *, family: str, overwrite: bool = False,
                    **capabilities: Any) -> Oracle:
    """Register ``solve(p, v, r, *, visible=None, return_support=False) -> SparseApprox``.

    ``family`` is one of :data:`FAMILIES` (the test sweep checks a value-aware oracle's error
    against top-r's on every query); ``capabilities`` are :class:`~attnlab.methods.MethodRecord`
    fields (default budget ``r``, exact at r >= the number of visible keys).

    Raises:
        TypeError: ``name`` is not a non-empty str or ``solve`` is not callable.
        ValueError: the name is taken and ``overwrite`` is False; an unknown ``family``.
    """
    check_registration("oracle", dict.fromkeys(_ORACLES.names()), name, solve, "solve", overwrite)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    capabilities.setdefault("budget", Budget("r", 8))
    capabilities.setdefault("differentiable", False)
    capabilities.setdefault("exact_options", _exact_at_all_keys)
    _ORACLES.register(name, MethodRecord(name, solve, kind="oracle", **capabilities), overwrite=True)
    _FAMILY[name] = family
    return solve


def _exact_at_all_keys(problem) -> dict:
    return {"r": max(problem.k.shape[-2], 1)}


def available_oracles() -> list[str]:
    """Names of the registered oracles."""
    return _ORACLES.names()


def get_oracle(name: str) -> Oracle:
    """The solver registered under ``name``.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no oracle of that name.
    """
    return _ORACLES.get(name).run


def get_oracle_record(name: str) -> MethodRecord:
    """The capability record of oracle ``name`` (see :mod:`attnlab.methods`)."""
    return _ORACLES.get(name)


def oracle_family(name: str) -> str:
    """One of :data:`FAMILIES`: what oracle ``name`` approximates."""
    _ORACLES.get(name)
    return _FAMILY[name]


for _name, _solve, _family in [("topr", topr, "value-oblivious"), ("topr-l2", topr_l2, "value-oblivious"),
                               ("va-greedy", va_greedy, "value-aware"), ("va-swap", va_swap, "value-aware"),
                               ("va-exact", va_exact, "value-aware"), ("omp", omp, "unconstrained")]:
    register_oracle(_name, _solve, family=_family)
del _name, _solve, _family


def approximate_output(p: Tensor, v: Tensor, r: int, method: str, *,
                       visible: Tensor | None = None) -> Tensor:
    """The r-sparse approximation (..., D_v) of ``o = p^T V`` by the oracle ``method``.

    Raises:
        TypeError, ValueError: unknown ``method``, or see
            :func:`attnlab.approx.sparse.prepare` for the inputs.
    """
    return get_oracle(method)(p, v, r, visible=visible).output


def oracle_attention(query: Tensor, key: Tensor, value: Tensor, *, method: str, r: int, kernel: str = "softmax",
                     attn_mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                     enable_gqa: bool = False, eps: float = 1e-6,
                     return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Attention whose output is the r-sparse oracle ``method``'s approximation of the exact one.

    Same signature as :func:`attnlab.attention` (so a model can use it through
    ``set_attention``) plus ``method`` (a name of ``attnlab.approx.oracles``) and ``r``. The
    exact weights p (B..., H, L, S) come from ``attention(..., return_weights=True)``; every
    query is solved at once, values shared per head (GQA: repeated to the query heads). Rows
    that see fewer than r keys or have all-zero weights keep their exact output.

    Returns:
        The output (B..., H, L, D_v); with ``return_weights``, (output, p, p_hat) where p_hat
        (B..., H, L, S) are the oracle's weights (p on the rows kept exact).

    Raises:
        TypeError, ValueError: as :func:`attnlab.attention`; an unknown ``method``; ``r`` not an
            int >= 1.
    """
    solver = get_oracle(method)
    check_int("r", r, 1)
    out, p = attention(query, key, value, kernel=kernel, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                       enable_gqa=enable_gqa, eps=eps, return_weights=True)
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    L, S = p.shape[-2:]
    vis = visibility(attn_mask, is_causal, L, S, p.device)
    heads = query.shape[-3] // value.shape[-3]
    v = (value.repeat_interleave(heads, dim=-3) if heads > 1 else value).to(dtype).unsqueeze(-3)
    pp = p.to(dtype)
    n_vis = torch.full(p.shape[:-1], S, device=p.device) if vis is None else vis.sum(-1).expand(p.shape[:-1])
    short = (n_vis < r) | (pp.sum(-1) <= 0)
    if bool(short.all()):
        return (out, p, p) if return_weights else out
    visible = None if vis is None and not bool(short.any()) else (short.unsqueeze(-1) | (True if vis is None else vis))
    sol = solver(pp, v, r, visible=visible, return_support=return_weights)
    approx = torch.where(short.unsqueeze(-1), out.to(dtype), sol.output).to(out.dtype)
    if not return_weights:
        return approx
    p_hat = torch.where(short.unsqueeze(-1), pp, sol.dense_weights(S)).to(p.dtype)
    return approx, p, p_hat
