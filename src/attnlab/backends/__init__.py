"""Backends: interchangeable ways to compute the same attention, chosen by name.

Each backend is a :class:`Backend` in a registry: its function takes a canonical
:class:`~attnlab.backends._common.Problem` and returns the output (and weights when it can).
``backend="auto"`` resolves through :func:`resolve_backend`, the one place that decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..kernels import Kernel
from ._common import Problem
from .chunked import chunked_attention
from .flex import flex_attention_backend
from .linear import linear_attention, linear_refusal, supports_linear
from .reference import reference_attention
from .sdpa import sdpa_attention

__all__ = [
    "Backend",
    "Problem",
    "available_backends",
    "get_backend",
    "register_backend",
    "resolve_backend",
]


@dataclass(frozen=True)
class Backend:
    """A registered backend.

    Attributes:
        name: registry name.
        run: ``run(problem) -> output`` in the canonical layout.
        supports: ``supports(kernel) -> bool``; a call with another kernel is refused.
        returns_weights: whether it can materialize the weights (only the reference can).
        doc: one line for listings.
        accepts: ``accepts(problem) -> reason or None``: why this backend refuses an input it
            cannot compute exactly (e.g. ``linear`` with a mask that varies over queries).
            :func:`attnlab.attention` raises ``ValueError(reason)`` before running it.
    """

    name: str
    run: Callable[[Problem], Tensor]
    supports: Callable[[Kernel], bool]
    returns_weights: bool = False
    doc: str = ""
    accepts: Callable[[Problem], str | None] = lambda _: None


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend, *, overwrite: bool = False) -> Backend:
    """Add a backend to the registry (the test suite checks every registered one)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be an attnlab.backends.Backend, got {type(backend).__name__}")
    if backend.name == "auto":
        raise ValueError("backend name 'auto' is reserved")
    if backend.name in _REGISTRY and not overwrite:
        raise ValueError(f"backend {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def available_backends() -> list[str]:
    """Names of the registered backends (``"auto"`` is not one of them)."""
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """Look a backend up by name.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no backend of that name is registered.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"backend must be 'auto' or one of {available_backends()}, got {name!r}"
        ) from None


def resolve_backend(kernel: Kernel, *, return_weights: bool = False) -> Backend:
    """What ``backend="auto"`` runs, for every input:

    1. ``return_weights=True``: ``reference`` (the only backend that materializes weights);
    2. the softmax kernel: ``sdpa`` (torch's fused kernels);
    3. any other kernel: ``chunked`` (tiled, memory-efficient, recomputing backward).

    The choice never depends on sequence length.
    """
    if return_weights:
        return _REGISTRY["reference"]
    if kernel.exponential and _REGISTRY["sdpa"].supports(kernel):
        return _REGISTRY["sdpa"]
    return _REGISTRY["chunked"]


def _is_softmax(kernel: Kernel) -> bool:
    return kernel.name == "softmax" and kernel.exponential


register_backend(Backend("reference", lambda p: reference_attention(p)[0], lambda _: True, True,
                         "materializes the weights; defines the semantics"))
register_backend(Backend("chunked", chunked_attention, lambda _: True, False,
                         "query tiles, O(tile) memory, recomputing backward"))
register_backend(Backend("sdpa", sdpa_attention, _is_softmax, False,
                         "torch.nn.functional.scaled_dot_product_attention (softmax only)"))
register_backend(Backend("linear", linear_attention, supports_linear, False,
                         "squared kernel only, degree-2 features, O(L D^2 D_v); key-padding masks only",
                         accepts=linear_refusal))
# FlexAttention has no CPU backward (see backends/flex.py), so the registry, whose every backend
# must pass the gradient sweep, holds it only where CUDA is available.
if torch.cuda.is_available():
    register_backend(Backend("flex", flex_attention_backend, lambda _: True, False,
                             "torch FlexAttention, score_mod = log f(s) and the eps from its log-sum-exp"))
