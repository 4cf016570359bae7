"""Backends: interchangeable ways to compute the same attention, chosen by name.

Each backend is a :class:`Backend` (a :class:`~attnlab.methods.MethodRecord`) in a registry: its
``run`` takes an :class:`~attnlab.problem.AttentionProblem` and returns the output in the canonical
layout; its record says which kernels, devices, dtypes, masks and dropout it takes, and
:meth:`Backend.refusal` why it refuses a problem. ``backend="auto"`` resolves through
:func:`resolve_backend`, the one place that decides; :func:`select_backend` is what
:func:`attnlab.attention` calls (each candidate's refusal is evaluated once per call).

Adding a backend is one file that calls :func:`register_backend` (see CONTRIBUTING.md): the test
sweep enrols it from its record.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..kernels import Kernel
from ..methods import Budget, MethodRecord
from ..problem import AttentionProblem
from ..registry import Registry
from . import cpp
from ._common import FUSED_KERNEL_IDS, fresh, normalizer, tile_visible, tile_weights
from ._features import chunked_feature_attention
from .chunked import chunked_attention
from .flex import flex_attention_backend, flex_unavailable_reason
from .linear import linear_attention
from .reference import reference_attention
from .sdpa import sdpa_attention

#: The old name of :class:`attnlab.problem.AttentionProblem`.
Problem = AttentionProblem

__all__ = [
    "Backend",
    "Budget",
    "Problem",
    "available_backends",
    "chunked_feature_attention",
    "fresh",
    "get_backend",
    "normalizer",
    "register_backend",
    "resolve_backend",
    "select_backend",
    "tile_visible",
    "tile_weights",
]


@dataclass(frozen=True)
class Backend(MethodRecord):
    """A registered backend: a :class:`~attnlab.methods.MethodRecord` of kind ``"backend"``.

    ``run(problem) -> output`` computes exactly what the ``reference`` backend defines, for every
    problem :meth:`refusal` accepts (the front door never runs it on one it refuses).
    """

    kind: str = "backend"


_REGISTRY: Registry[Backend] = Registry("backend", arg="backend", entry="backend", entry_type=Backend,
                                        reserved=("auto",))


def register_backend(backend: Backend, *, overwrite: bool = False) -> Backend:
    """Add a backend to the registry (the test sweep checks every registered one from its record).

    Raises:
        TypeError: ``backend`` is not a :class:`Backend`.
        ValueError: its name is ``"auto"``, or taken and ``overwrite`` is False.
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be an attnlab.backends.Backend, got {type(backend).__name__}")
    return _REGISTRY.register(backend.name, backend, overwrite=overwrite)


def available_backends() -> list[str]:
    """Names of the registered backends (``"auto"`` is not one of them)."""
    return _REGISTRY.names()


def get_backend(name: str) -> Backend:
    """Look a backend up by name.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no backend of that name is registered; for ``triton`` and ``flex``, which are
            registered only where they can run, the reason they are not.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY.get(name)
    if name in _UNREGISTERED_BECAUSE:
        raise ValueError(f"backend {name!r} is not available here: {_UNREGISTERED_BECAUSE[name]()}; "
                         f"the available ones are {available_backends()}")
    raise ValueError(f"backend must be 'auto' or one of {available_backends()}, got {name!r}")


def resolve_backend(kernel: Kernel, *, return_weights: bool = False,
                    problem: AttentionProblem | None = None) -> Backend:
    """What ``backend="auto"`` runs, for every input:

    1. ``return_weights=True``: ``reference`` (the only backend that materializes weights);
    2. the softmax kernel without dropout: ``sdpa`` (torch's fused kernels; it refuses
       ``dropout_p > 0``, whose mask it could not share with the other backends);
    3. a kernel the ``triton`` backend compiles (expressive, squared, relu, relu2), when
       ``triton`` is registered, Triton's interpreter is off, and ``problem``'s tensors are on
       CUDA in float16/bfloat16/float32 with head dims <= 128 (what the backend accepts): ``triton``;
    4. the same kernels on CPU tensors, when the ``cpp`` backend's C++ kernels build and load
       (the first such call compiles them, once per clone or venv): ``cpp``;
    5. any other kernel or input (user kernels; softmax with dropout; CPU where no C++
       compiler exists): ``chunked`` (tiled, memory-efficient, recomputing backward).

    Every backend it picks honours ``dropout_p`` (``triton`` and ``linear`` refuse it, so rule 3
    does not apply to a call with dropout). A candidate is asked for its refusal once; the backend
    returned accepts ``problem``.

    ``problem`` is the validated call (:func:`attnlab.problem.build_problem`); without it
    rules 3 and 4 never apply. The choice never depends on sequence length.
    """
    if return_weights:
        return _REGISTRY.get("reference")
    sdpa = _REGISTRY.get("sdpa")
    if kernel.exponential and (sdpa.supports(kernel) if problem is None else sdpa.refusal(problem) is None):
        return sdpa
    triton_backend = _REGISTRY.get("triton") if "triton" in _REGISTRY else None
    if (triton_backend is not None and problem is not None and problem.q.device.type == "cuda"
            and not _triton_interpreter_requested() and triton_backend.supports(kernel)
            and triton_backend.refusal(problem) is None):
        return triton_backend
    cpp_backend = _REGISTRY.get("cpp")
    if (problem is not None and problem.q.device.type == "cpu" and cpp_backend.supports(kernel)
            and cpp_backend.refusal(problem) is None):
        return cpp_backend
    return _REGISTRY.get("chunked")


def select_backend(name: str, problem: AttentionProblem, *, return_weights: bool = False) -> Backend:
    """The backend :func:`attnlab.attention` runs for ``backend=name``, having checked once that
    it accepts ``problem`` (``"auto"``: :func:`resolve_backend`).

    Raises:
        TypeError, ValueError: an unknown name (see :func:`get_backend`); the backend's refusal;
            ``return_weights=True`` with a backend that cannot materialize the weights.
    """
    if name == "auto":
        return resolve_backend(problem.kernel, return_weights=return_weights, problem=problem)
    chosen = get_backend(name)
    reason = chosen.refusal(problem)
    if reason is not None:
        raise ValueError(reason)
    if return_weights and not chosen.returns_weights:
        raise ValueError(f"return_weights=True needs backend 'reference' or 'auto', got {chosen.name!r}")
    return chosen


_FUSED = tuple(FUSED_KERNEL_IDS)
_FALLBACK = "use backend 'chunked' or 'reference'"

register_backend(Backend("reference", lambda p: reference_attention(p)[0], returns_weights=True, dropout=True,
                         doc="materializes the weights; defines the semantics"))
register_backend(Backend("chunked", chunked_attention, dropout=True,
                         doc="query tiles, O(tile) memory, recomputing backward"))
register_backend(Backend("cpp", lambda p: cpp.cpp_attention(p, _checked=True), kernels=_FUSED, devices=("cpu",),
                         dropout=True, refuse=cpp.refusal, advice="use backend 'triton' or 'chunked'",
                         doc="fused C++ CPU kernels, forward and backward; expressive, squared, relu, relu2"))
register_backend(Backend("sdpa", sdpa_attention, kernels=("softmax",),
                         doc="torch.nn.functional.scaled_dot_product_attention (softmax only, no dropout)"))
register_backend(Backend("linear", lambda p: linear_attention(p, _checked=True), kernels=("squared",),
                         masks="key-padding",
                         doc="squared kernel only, degree-2 features, O(L D^2 D_v); key-padding masks only"))


def _flex_unregistered_because() -> str:
    return ("it is registered only where CUDA is available, and torch.cuda.is_available() is False "
            "(torch's FlexAttention has no backward on CPU); use backend 'chunked'")


def _flex_refusal(problem: AttentionProblem) -> str | None:
    from ..problem import needs_grad

    return flex_unavailable_reason(problem.q.device, needs_grad=needs_grad(problem))


# FlexAttention has no CPU backward (see backends/flex.py), so the registry, whose every backend
# must pass the gradient sweep, holds it only where CUDA is available.
if torch.cuda.is_available():
    register_backend(Backend("flex", flex_attention_backend, refuse=_flex_refusal, advice=_FALLBACK,
                             doc="torch FlexAttention, score_mod = log f(s) and the eps from its log-sum-exp"))


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


def _triton_refusal(problem: AttentionProblem) -> str | None:
    """Why the triton backend refuses ``problem`` beyond its record (None when it accepts it)."""
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


def _triton_run(problem: AttentionProblem) -> torch.Tensor:
    from .triton_kernels import triton_attention

    return triton_attention(problem)


# Registered where its kernels can run: triton is installed and there is a GPU, or Triton's CPU
# interpreter was requested (the tests do that on machines without CUDA).
if importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or _triton_interpreter_requested()):
    register_backend(Backend(
        "triton", _triton_run, kernels=_FUSED, dtypes=(torch.float16, torch.bfloat16, torch.float32),
        devices=("cuda", "cpu") if _triton_interpreter_requested() else ("cuda",), refuse=_triton_refusal,
        advice=_FALLBACK, doc="fused Triton kernels, forward and backward; expressive, squared, relu, relu2"))

#: Built-in backends registered only where they can run: why one is missing.
_UNREGISTERED_BECAUSE: dict[str, Callable[[], str]] = {"triton": _triton_unregistered_because,
                                                       "flex": _flex_unregistered_because}
