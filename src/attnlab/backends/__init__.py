"""Backends: interchangeable ways to compute the same attention, chosen by name.

Each backend is a :class:`Backend` in a registry: its function takes a canonical
:class:`~attnlab.backends._common.Problem` and returns the output (and weights when it can).
``backend="auto"`` resolves through :func:`resolve_backend`, the one place that decides.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..kernels import Kernel
from . import cpp
from ._common import Problem, dropout_refusal, is_fused_kernel
from .chunked import chunked_attention
from .flex import flex_attention_backend
from .linear import linear_attention, linear_refusal, supports_linear
from .reference import reference_attention
from .sdpa import sdpa_attention, sdpa_refusal

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
        ValueError: no backend of that name is registered; for ``triton`` and ``flex``, which are
            registered only where they can run, the reason they are not.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in _UNREGISTERED_BECAUSE:
            raise ValueError(f"backend {name!r} is not available here: {_UNREGISTERED_BECAUSE[name]()}; "
                             f"the available ones are {available_backends()}") from None
        raise ValueError(
            f"backend must be 'auto' or one of {available_backends()}, got {name!r}"
        ) from None


def resolve_backend(kernel: Kernel, *, return_weights: bool = False, problem: Problem | None = None) -> Backend:
    """What ``backend="auto"`` runs, for every input:

    1. ``return_weights=True``: ``reference`` (the only backend that materializes weights);
    2. the softmax kernel without dropout: ``sdpa`` (torch's fused kernels; it refuses
       ``dropout_p > 0``, whose mask it could not share with the other backends);
    3. a kernel the ``triton`` backend compiles (expressive, squared, relu, relu2), when
       ``triton`` is registered, Triton's interpreter is off, and ``problem``'s tensors are on
       CUDA in float16/bfloat16/float32 with head dims <= 128 (what the backend accepts): ``triton``;
    4. the same kernels on CPU tensors, when the ``cpp`` backend's C++ kernels build and load
       (the first such call compiles them, once per machine): ``cpp``;
    5. any other kernel or input (user kernels; softmax with dropout; CPU where no C++
       compiler exists): ``chunked`` (tiled, memory-efficient, recomputing backward).

    Every backend it picks honours ``dropout_p`` (``triton`` and ``linear`` refuse it, so rule 3
    does not apply to a call with dropout).

    ``problem`` is the canonical call (:func:`attnlab.functional.canonicalize`); without it
    rules 3 and 4 never apply. The choice never depends on sequence length.
    """
    if return_weights:
        return _REGISTRY["reference"]
    sdpa = _REGISTRY["sdpa"]
    if kernel.exponential and sdpa.supports(kernel) and (problem is None or sdpa.accepts(problem) is None):
        return sdpa
    triton_backend = _REGISTRY.get("triton")
    if (triton_backend is not None and problem is not None and problem.q.device.type == "cuda"
            and not _triton_interpreter_requested() and triton_backend.supports(kernel)
            and triton_backend.accepts(problem) is None):
        return triton_backend
    cpp_backend = _REGISTRY["cpp"]
    if (problem is not None and problem.q.device.type == "cpu" and cpp_backend.supports(kernel)
            and cpp_backend.accepts(problem) is None):
        return cpp_backend
    return _REGISTRY["chunked"]


def _is_softmax(kernel: Kernel) -> bool:
    return kernel.name == "softmax" and kernel.exponential


register_backend(Backend("reference", lambda p: reference_attention(p)[0], lambda _: True, True,
                         "materializes the weights; defines the semantics"))
register_backend(Backend("chunked", chunked_attention, lambda _: True, False,
                         "query tiles, O(tile) memory, recomputing backward"))
register_backend(Backend("cpp", cpp.cpp_attention, is_fused_kernel, False,
                         "fused C++ CPU kernels, forward and backward; expressive, squared, relu, relu2",
                         accepts=cpp.refusal))
register_backend(Backend("sdpa", sdpa_attention, _is_softmax, False,
                         "torch.nn.functional.scaled_dot_product_attention (softmax only, no dropout)",
                         accepts=sdpa_refusal))
register_backend(Backend("linear", linear_attention, supports_linear, False,
                         "squared kernel only, degree-2 features, O(L D^2 D_v); key-padding masks only",
                         accepts=linear_refusal))


def _flex_unregistered_because() -> str:
    return ("it is registered only where CUDA is available, and torch.cuda.is_available() is False "
            "(torch's FlexAttention has no backward on CPU); use backend 'chunked'")


# FlexAttention has no CPU backward (see backends/flex.py), so the registry, whose every backend
# must pass the gradient sweep, holds it only where CUDA is available.
if torch.cuda.is_available():
    register_backend(Backend("flex", flex_attention_backend, lambda _: True, False,
                             "torch FlexAttention, score_mod = log f(s) and the eps from its log-sum-exp"))


# --- triton --------------------------------------------------------------------------------
# The kernels live in triton_kernels.py, which imports triton; it is imported on first use, so
# that `import attnlab` never imports triton.
#: The largest D and D_v: a tile holds a whole head dim (padded to a power of two) in registers.
_TRITON_MAX_HEAD_DIM = 128


def _triton_interpreter_requested() -> bool:
    """TRITON_INTERPRET=1: Triton runs its kernels in a CPU interpreter (checks, not speed)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_import_error() -> str | None:
    """Why ``triton`` (and the kernels module) cannot be imported, or None; tried once."""
    try:
        from . import triton_kernels  # noqa: F401
    except Exception as err:  # an ImportError, or a broken triton install failing otherwise
        return f"backend 'triton' cannot import triton: {type(err).__name__}: {err}"
    return None


def _triton_refusal(problem: Problem) -> str | None:
    """Why the triton backend refuses ``problem`` (None when it accepts it)."""
    if problem.dropout_p > 0:
        return dropout_refusal("triton", problem)
    if problem.q.dtype == torch.float64:
        return ("backend 'triton' does not support float64 (its kernels compute in float32): "
                "use backend 'chunked' or 'reference' for float64")
    D, Dv = problem.q.shape[-1], problem.v.shape[-1]
    if max(D, Dv) > _TRITON_MAX_HEAD_DIM:
        return (f"backend 'triton' supports head dims up to {_TRITON_MAX_HEAD_DIM} (a tile holds a whole head "
                f"dim), got D={D}, D_v={Dv}: use backend 'chunked'")
    error = _triton_import_error()
    if error is not None:
        return error
    from . import triton_kernels

    if problem.q.device.type != "cuda" and not triton_kernels.INTERPRETED:
        return (f"backend 'triton' needs CUDA tensors, got {problem.q.device.type} (Triton's interpreter, "
                "TRITON_INTERPRET=1 before triton is imported, runs them on CPU): use backend 'chunked'")
    return None


def _triton_unregistered_because() -> str:
    """Why the triton backend is not registered (registration below decides at import)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; its kernels run on CUDA GPUs)"
    if not (torch.cuda.is_available() or _triton_interpreter_requested()):
        return ("there is no CUDA device (torch.cuda.is_available() is False); to run its kernels in Triton's "
                "CPU interpreter (slow, for tests), set TRITON_INTERPRET=1 before importing attnlab")
    return ("it was not registered when attnlab was imported (TRITON_INTERPRET=1, for Triton's CPU "
            "interpreter, must be set before that import)")


def _triton_run(problem: Problem) -> Tensor:
    from .triton_kernels import triton_attention

    return triton_attention(problem)


# Registered where its kernels can run: triton is installed and there is a GPU, or Triton's CPU
# interpreter was requested (the tests do that on machines without CUDA).
if importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or _triton_interpreter_requested()):
    register_backend(Backend("triton", _triton_run, is_fused_kernel, False,
                             "fused Triton kernels, forward and backward; expressive, squared, relu, relu2",
                             accepts=_triton_refusal))

#: Built-in backends registered only where they can run: why one is missing.
_UNREGISTERED_BECAUSE: dict[str, Callable[[], str]] = {"triton": _triton_unregistered_because,
                                                       "flex": _flex_unregistered_because}
