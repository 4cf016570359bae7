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

import torch
from torch import Tensor

from .._checks import check_int
from ..backends._common import visibility
from ..functional import attention
from .sparse import SparseApprox, omp, topr, topr_l2
from .value_aware import va_exact, va_greedy, va_swap

__all__ = ["Oracle", "approximate_output", "available_oracles", "get_oracle", "oracle_attention"]

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
