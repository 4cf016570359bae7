"""The one signature of attention-shaped methods: ``fn(query, key, value, *, kernel, attn_mask,
is_causal, scale, enable_gqa, eps, **options)`` made from a core ``core(problem, **options)``.

:func:`attention_signature` writes :func:`attnlab.attention`'s parameter list once (from
:func:`attnlab.problem.build_problem`'s own signature) for every practical approximation, so a
method is a core on the canonical :class:`~attnlab.problem.AttentionProblem` and its public
function builds the problem once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .problem import PROBLEM_ARGS, AttentionProblem, build_problem

__all__ = ["attention_core", "attention_signature", "problem_parameters"]

_QKV = tuple(inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Tensor")
             for n in ("query", "key", "value"))


def problem_parameters(without: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """:data:`PROBLEM_ARGS` as :func:`build_problem` declares them (keyword-only), less ``without``."""
    params = inspect.signature(build_problem).parameters
    return [params[n] for n in PROBLEM_ARGS if n not in without]


@dataclass(frozen=True)
class _Core:
    """What :func:`attention_signature` attaches to the function it makes (see :func:`attention_core`)."""

    core: Callable[..., Tensor]
    entry: Callable[..., Tensor]
    method: str
    takes: frozenset[str]
    options: frozenset[str]
    own_kernel: bool

    def split(self, query: Tensor, key: Tensor, value: Tensor,
              kwargs: dict[str, Any]) -> tuple[AttentionProblem, dict[str, Any]]:
        """The problem of a call (built once, by :func:`build_problem`) and the core's options."""
        for name in kwargs:
            if name not in self.takes and name not in self.options:
                raise TypeError(f"{self.entry.__name__}() got an unexpected keyword argument {name!r}")
        if self.own_kernel and kwargs.get("scale") is not None:
            raise ValueError(f"scale: method {self.method!r} defines its own kernel and has no score scale")
        args = {n: v for n, v in kwargs.items() if n in self.takes}
        options = {n: v for n, v in kwargs.items() if n in self.options}
        return build_problem(query, key, value, **args), options

    def __call__(self, query: Tensor, key: Tensor, value: Tensor, kwargs: dict[str, Any]) -> Tensor:
        problem, options = self.split(query, key, value, kwargs)
        return problem.with_out_shape(self.core(problem, **options))


def attention_signature(core: Callable[..., Tensor] | None = None, /, *, method: str | None = None,
                        name: str | None = None, doc: str | None = None, without: tuple[str, ...] = (),
                        own_kernel: bool = False) -> Any:
    """``fn(query, key, value, *, kernel, attn_mask, is_causal, scale, enable_gqa, eps, **options)``
    running ``core(problem, **options)`` (canonical layout in and out, like a backend) on the
    problem :func:`build_problem` makes of the call; the output in the caller's shape.

    The problem arguments come from :data:`PROBLEM_ARGS` (:func:`build_problem`'s parameters),
    the options from ``core``'s keyword parameters after ``problem``; ``fn.__signature__`` lists
    both, so ``help(fn)`` and :func:`inspect.signature` show the whole call. Usable as a
    decorator, bare or with arguments.

    Args:
        core: ``core(problem, **options) -> (N, H_kv, G, L, D_v)``.
        method: the name in messages (default: ``core.__name__``).
        name: ``fn.__name__`` (default: ``core.__name__``); doc: ``fn.__doc__`` (default: core's).
        without: problem arguments the method does not take (``nystrom``: ``("eps",)``).
        own_kernel: the method defines its own kernel: no ``kernel`` argument, and ``scale``
            must stay None (a ValueError otherwise).

    Raises:
        TypeError: an option of ``core`` that shadows a problem argument, or is positional-only.
    """
    if core is None:
        return functools.partial(attention_signature, method=method, name=name, doc=doc, without=without,
                                 own_kernel=own_kernel)
    hidden = tuple(without) + (("kernel",) if own_kernel else ())
    problem_params = problem_parameters(hidden)
    options = list(inspect.signature(core).parameters.values())[1:]  # after problem
    for p in options:
        if p.name in PROBLEM_ARGS or p.name in ("query", "key", "value"):
            raise TypeError(f"option {p.name!r} of {core.__name__} shadows an argument of attnlab.attention")
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"option {p.name!r} of {core.__name__} must be a keyword")
    options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else p for p in options]

    @functools.wraps(core)
    def fn(query: Tensor, key: Tensor, value: Tensor, **kwargs: Any) -> Tensor:
        return spec(query, key, value, kwargs)

    fn.__signature__ = inspect.Signature([*_QKV, *problem_params, *options], return_annotation="Tensor")
    fn.__name__ = fn.__qualname__ = name or core.__name__
    fn.__doc__ = core.__doc__ if doc is None else doc
    del fn.__wrapped__  # fn takes (query, key, value), not the problem
    spec = _Core(core, fn, method or core.__name__, frozenset(p.name for p in problem_params),
                 frozenset(p.name for p in options), own_kernel)
    fn.__attention_core__ = spec
    return fn


def attention_core(fn: Callable[..., Any]) -> _Core | None:
    """The core behind ``fn`` when :func:`attention_signature` made ``fn`` (not an alias or other
    wrapper of it), else None: call ``spec.split(q, k, v, options)`` and ``spec.core(problem, **options)``."""
    spec = getattr(fn, "__attention_core__", None)
    return spec if isinstance(spec, _Core) and spec.entry is fn else None
