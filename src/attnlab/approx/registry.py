"""Practical attention approximations, selectable by name.

Every registered method takes ``(query, key, value, *, attn_mask=None, is_causal=False,
scale=None, ...)`` in attnlab's layout (see :mod:`attnlab.functional`) plus its own keyword
options, and returns the (B..., H, L, D_v) output. Built-ins:

| name | function | approximates | causal |
|---|---|---|---|
| ``topk`` | :func:`attnlab.approx.topk.topk_attention` | any kernel (exact at top_k >= S) | yes |
| ``performer`` | :func:`attnlab.approx.features.performer_attention` | softmax | yes |
| ``elu-linear`` | :func:`attnlab.approx.features.elu_linear_attention` | its own kernel | yes |
| ``cosformer`` | :func:`attnlab.approx.features.cosformer_attention` | its own kernel | yes |
| ``nystrom`` | :func:`attnlab.approx.lowrank.nystrom_attention` | softmax | no |

``linear`` is a deprecated alias of ``elu-linear`` (it warns): backend ``linear`` is the exact
squared kernel.

Example:
    >>> import torch
    >>> from attnlab.approx.registry import approximate_attention
    >>> q, k, v = torch.randn(3, 1, 2, 16, 8).unbind(0)
    >>> approximate_attention(q, k, v, method="topk", top_k=4, is_causal=True).shape
    torch.Size([1, 2, 16, 8])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor

from .._checks import check_registration
from .features import cosformer_attention, elu_linear_attention, linear_attention, performer_attention
from .lowrank import nystrom_attention
from .topk import topk_attention

__all__ = [
    "BUDGET_OPTIONS",
    "approximate_attention",
    "available_approximations",
    "get_approximation",
    "register_approximation",
]

Approximation = Callable[..., Tensor]

_REGISTRY: dict[str, Approximation] = {}


def register_approximation(name: str, fn: Approximation, *, overwrite: bool = False) -> Approximation:
    """Register ``fn(query, key, value, **options)`` under ``name`` and return it.

    Raises:
        TypeError: ``name`` is not a non-empty str or ``fn`` is not callable.
        ValueError: the name is taken and ``overwrite`` is False.
    """
    check_registration("approximation", _REGISTRY, name, fn, "fn", overwrite)
    _REGISTRY[name] = fn
    _refresh_doc()
    return fn


def available_approximations() -> list[str]:
    """Names of the registered approximations, built-ins first."""
    return list(_REGISTRY)


def get_approximation(name: str) -> Approximation:
    """Look an approximation up by name.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no approximation of that name (the message lists the available ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"method must be one of {available_approximations()}, got {name!r}"
        ) from None


def approximate_attention(
    query: Tensor, key: Tensor, value: Tensor, *, method: str, **options: object
) -> Tensor:
    """Run the approximation registered as ``method`` with keyword ``options``.

    An option left out takes the method's default, listed below; a budget left out is not
    inferred from anything (``topk`` without ``top_k`` keeps 32 keys per query, whatever S is).

    Raises:
        TypeError: an option that the method does not accept (named in the message).
        ValueError: an unknown ``method``; or whatever the method raises.
    """
    fn = get_approximation(method)
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = [n for n, p in params.items() if p.kind in named][3:]  # after q, k, v
        for option in options:
            if option not in accepted:
                raise TypeError(
                    f"option {option!r} is not accepted by method {method!r}; it accepts {accepted}"
                )
    return fn(query, key, value, **options)


#: The option that sets each built-in method's budget (its cost per query).
BUDGET_OPTIONS = {"topk": "top_k", "performer": "num_features", "nystrom": "num_landmarks"}

_BASE_DOC = approximate_attention.__doc__


def _options(fn: Approximation) -> list[str]:
    """``name=default`` (or ``name``: required) for every keyword option of ``fn`` after q, k, v."""
    try:
        params = list(inspect.signature(fn).parameters.values())[3:]
    except (TypeError, ValueError):  # a callable without an inspectable signature
        return ["(signature not inspectable)"]
    out = []
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            out.append(f"**{p.name}")
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            out.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    return out


def _refresh_doc() -> None:
    """Rebuild ``approximate_attention.__doc__`` from the registry: every method, the function
    behind it, its budget option and every option with its default (so it cannot go stale)."""
    if _BASE_DOC is None:  # python -OO strips docstrings
        return
    lines = ["", "    Methods (generated from the registry, updated by :func:`register_approximation`):", ""]
    for name, fn in _REGISTRY.items():
        where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        budget = BUDGET_OPTIONS.get(name)
        head = f"    - ``{name}`` (:func:`{where}`"
        head += f"; budget: ``{budget}``)" if budget else ")"
        lines.append(f"{head}: {', '.join(_options(fn)) or 'no options'}")
    approximate_attention.__doc__ = _BASE_DOC.rstrip() + "\n" + "\n".join(lines) + "\n"


for _name, _fn in [
    ("topk", topk_attention),
    ("performer", performer_attention),
    ("elu-linear", elu_linear_attention),
    ("cosformer", cosformer_attention),
    ("nystrom", nystrom_attention),
    ("linear", linear_attention),  # deprecated alias of elu-linear (warns)
]:
    register_approximation(_name, _fn)

del _name, _fn

# Sparse selectors under a KV budget (issue 14): budget ``top_k`` full K/V rows per query.
from .selectors import REGISTERED as _SELECTORS  # noqa: E402
from .selectors import make_approximation as _make_approximation  # noqa: E402

for _name in _SELECTORS:
    BUDGET_OPTIONS[_name] = "top_k"
    register_approximation(_name, _make_approximation(_name))
del _name
