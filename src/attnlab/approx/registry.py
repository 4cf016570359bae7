"""Practical attention approximations, selectable by name.

A method's core takes the validated problem, ``core(problem, **options)`` ->
(N, H_kv, G, L, D_v) in the canonical layout (:mod:`attnlab.problem`), like a backend; its
public function, made by :func:`attnlab.signature.attention_signature`, takes
:func:`attnlab.attention`'s arguments plus the options and returns the (B..., H, L, D_v) output.
:func:`approximate_attention` builds the problem once, asks the record once and runs the core.
A function registered with the ``(query, key, value, **options)`` convention (the sparse
selectors, a deprecated alias) is called as it is. Built-ins:

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
from typing import Any

from torch import Tensor

from .._checks import check_registration
from ..methods import Budget, MethodRecord
from ..problem import PROBLEM_ARGS, build_problem
from ..registry import Registry
from ..signature import attention_core, attention_signature
from .features import cosformer_attention, elu_linear_attention, linear_attention, performer_attention
from .lowrank import nystrom_attention
from .topk import topk_attention

__all__ = [
    "BUDGET_OPTIONS",
    "approximate_attention",
    "available_approximations",
    "get_approximation",
    "get_record",
    "register_approximation",
]

Approximation = Callable[..., Tensor]


def _refresh() -> None:
    _refresh_doc()


_REGISTRY: Registry[MethodRecord] = Registry("approximation", arg="method", entry="fn", entry_type=MethodRecord,
                                             on_change=_refresh)


def register_approximation(name: str, fn: Approximation, *, overwrite: bool = False,
                           **capabilities: Any) -> Approximation:
    """Register ``fn`` under ``name`` and return the function users call.

    ``fn`` is a core ``fn(problem, *, **options)`` (its first parameter named ``problem``),
    wrapped here by :func:`attnlab.signature.attention_signature` (the wrapped function is
    returned and is what :func:`get_approximation` gives); a function that
    :func:`~attnlab.signature.attention_signature` made; or ``fn(query, key, value, **options)``,
    called as it is.

    ``capabilities`` are :class:`~attnlab.methods.MethodRecord` fields (``kernels``, ``devices``,
    ``dtypes``, ``masks``, ``causal``, ``differentiable``, ``budget``, ``exact_options``,
    ``refuse``, ``doc``); left out, a method takes every input (it raises what it refuses
    itself). :func:`approximate_attention`, the ``approx-error`` study and the test sweep read
    the record (:func:`get_record`).

    Raises:
        TypeError: ``name`` is not a non-empty str, ``fn`` is not callable, or a capability that
            is not a record field (or of the wrong type).
        ValueError: the name is taken and ``overwrite`` is False.
    """
    check_registration("approximation", dict.fromkeys(_REGISTRY.names()), name, fn, "fn", overwrite)
    if _takes_problem(fn):
        fn = attention_signature(fn, method=name)
    if "budget" not in capabilities and name in BUDGET_OPTIONS:
        capabilities["budget"] = _budget_from_signature(fn, BUDGET_OPTIONS[name])
    record = MethodRecord(name, fn, kind="approximation", **capabilities)
    if record.budget is not None:
        BUDGET_OPTIONS[name] = record.budget.option
    _REGISTRY.register(name, record, overwrite=True)
    return fn


def available_approximations() -> list[str]:
    """Names of the registered approximations, built-ins first."""
    return _REGISTRY.names()


def get_approximation(name: str) -> Approximation:
    """Look an approximation up by name.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no approximation of that name (the message lists the available ones).
    """
    return get_record(name).run


def get_record(name: str) -> MethodRecord:
    """The capability record of approximation ``name`` (see :mod:`attnlab.methods`).

    Raises:
        TypeError, ValueError: as :func:`get_approximation`.
    """
    return _REGISTRY.get(name)


def _takes_problem(fn: Approximation) -> bool:
    """Whether ``fn`` is a core: its first parameter is named ``problem``."""
    try:
        first = next(iter(inspect.signature(fn).parameters), None)
    except (TypeError, ValueError):
        return False
    return first == "problem"


def _budget_from_signature(fn: Approximation, option: str) -> Budget:
    """A :class:`Budget` for ``option`` with ``fn``'s default for it (0 where it has none)."""
    try:
        param = inspect.signature(fn).parameters.get(option)
    except (TypeError, ValueError):
        param = None
    default = param.default if param is not None and isinstance(param.default, int) else 0
    return Budget(option, default)


def _is_permissive(record: MethodRecord) -> bool:
    """Whether the record refuses nothing (then no problem is built to ask it)."""
    return record == MethodRecord(record.name, record.run, kind="approximation", budget=record.budget,
                                  exact_options=record.exact_options, differentiable=record.differentiable,
                                  doc=record.doc)


def refusal(method: str, query: Tensor, key: Tensor, value: Tensor, **options: object) -> str | None:
    """Why approximation ``method`` refuses this call (None when it takes it), from its record.

    Raises:
        TypeError, ValueError: an unknown method; arguments :func:`attnlab.attention` rejects.
    """
    record = get_record(method)
    if _is_permissive(record):
        return None
    args = {k: options[k] for k in PROBLEM_ARGS if k in options}
    return record.refusal(build_problem(query, key, value, defer_finite_check=True, **args))


def approximate_attention(
    query: Tensor, key: Tensor, value: Tensor, *, method: str, **options: object
) -> Tensor:
    """Run the approximation registered as ``method`` with keyword ``options``.

    An option left out takes the method's default, listed below; a budget left out is not
    inferred from anything (``topk`` without ``top_k`` keeps 32 keys per query, whatever S is).
    The method's record (:func:`get_record`) is asked once whether it takes the call.

    Raises:
        TypeError: an option that the method does not accept (named in the message).
        ValueError: an unknown ``method``; an input its record refuses (the reason, led by the
            argument: ``"is_causal: method 'nystrom' does not support ..."``); or whatever the
            method raises.
    """
    record = get_record(method)
    fn = record.run
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = [n for n, p in params.items() if p.kind in named][3:]  # after q, k, v
        for option in options:
            if option not in accepted:
                raise TypeError(
                    f"option {option!r} is not accepted by method {method!r}; it accepts {accepted}"
                )
    spec = attention_core(fn)
    if spec is None:  # the (query, key, value, **options) convention: selectors, aliases, users' functions
        reason = refusal(method, query, key, value, **options)
        if reason is not None:
            raise ValueError(reason)
        return fn(query, key, value, **options)
    problem, core_options = spec.split(query, key, value, options)
    reason = record.refusal(problem)
    if reason is not None:
        raise ValueError(reason)
    return problem.with_out_shape(spec.core(problem, **core_options))


#: The option that sets each method's budget (its cost per query); kept in step with the records.
BUDGET_OPTIONS: dict[str, str] = {}

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
    for name, fn in ((n, _REGISTRY.get(n).run) for n in _REGISTRY.names()):
        where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        budget = BUDGET_OPTIONS.get(name)
        head = f"    - ``{name}`` (:func:`{where}`"
        head += f"; budget: ``{budget}``)" if budget else ")"
        lines.append(f"{head}: {', '.join(_options(fn)) or 'no options'}")
    approximate_attention.__doc__ = _BASE_DOC.rstrip() + "\n" + "\n".join(lines) + "\n"


_SOFTMAX = ("softmax",)


def _landmarks_high(problem) -> int:
    return min(problem.q.shape[-2], problem.k.shape[-2])


def _exact_topk(problem) -> dict:
    return {"top_k": max(problem.k.shape[-2], 1)}


register_approximation("topk", topk_attention, budget=Budget("top_k", 32), exact_options=_exact_topk,
                       doc="chunked top-k attention (exact at top_k >= S)")
register_approximation("performer", performer_attention, kernels=_SOFTMAX, masks="key-padding",
                       budget=Budget("num_features", None), doc="FAVOR+ positive random features (softmax)")
register_approximation("elu-linear", elu_linear_attention, masks="key-padding",
                       doc="elu(x)+1 linear attention (its own kernel)")
register_approximation("cosformer", cosformer_attention, masks="key-padding",
                       doc="cosFormer (its own kernel)")
register_approximation("nystrom", nystrom_attention, kernels=_SOFTMAX, masks="none", causal=False,
                       budget=Budget("num_landmarks", 64, 1, _landmarks_high), doc="Nystromformer landmarks (softmax)")
register_approximation("linear", linear_attention, masks="key-padding",  # deprecated alias of elu-linear (warns)
                       doc="deprecated alias of elu-linear")

# Sparse selectors under a KV budget (issue 14): budget ``top_k`` full K/V rows per query.
from .selectors import REGISTERED as _SELECTORS  # noqa: E402
from .selectors import SELECTORS as _ENTRIES  # noqa: E402
from .selectors import make_approximation as _make_approximation  # noqa: E402

for _name in _SELECTORS:
    register_approximation(_name, _make_approximation(_name), budget=Budget("top_k", 32), differentiable=False,
                           kernels=_SOFTMAX if _ENTRIES[_name].softmax_only else None)
del _name
