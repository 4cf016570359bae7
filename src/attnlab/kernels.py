"""Similarity kernels: the map from a score s = scale * q.k to a non-negative weight.

Every backend normalizes the kernel's weights over the keys a query may see::

    o = sum_j f(s_j) v_j / (sum_j f(s_j) + eps)

except the exponential kernel, which is computed with the max-shift and no ``eps`` (it is
softmax, i.e. dot-product attention). A kernel's formula lives here, once; backends call
:meth:`Kernel.weights` and :meth:`Kernel.weights_vjp` and never re-derive it.

Users add a kernel by name with :func:`register_kernel`::

    >>> import torch, attnlab
    >>> cube = attnlab.kernels.register_kernel("abs3", lambda s: s.abs() ** 3)
    >>> q = k = v = torch.randn(1, 2, 5, 8)
    >>> attnlab.attention(q, k, v, kernel="abs3").shape
    torch.Size([1, 2, 5, 8])
    >>> attnlab.kernels.unregister_kernel("abs3")
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .registry import Registry

__all__ = [
    "Kernel",
    "available_kernels",
    "get_kernel",
    "register_kernel",
    "unregister_kernel",
]

WeightFn = Callable[[Tensor], Tensor]
VjpFn = Callable[[Tensor, Tensor], Tensor]


class Kernel:
    """A similarity kernel f: s -> a >= 0, applied elementwise to fp32 scores.

    Args:
        name: registry name.
        weights: f(s), out of place, elementwise, non-negative and finite for finite s.
        vjp: optional closed form of ``grad_a * f'(s)``; when omitted it is taken by autograd
            through ``weights`` (correct, a little slower).
        weights_: optional in-place f (overwrites and returns its argument); backends that own
            their score buffers use it to save memory passes. Defaults to ``weights``.
        weights_and_vjp_: optional fused in-place ``(s, g) -> f(s)`` that overwrites ``g`` with
            ``g * f'(s)`` and ``s`` with ``f(s)`` (returned); the recomputing backward of the
            ``chunked`` backend calls it on buffers it owns. By default ``vjp`` then ``weights_``.
        exponential: True only for softmax: backends subtract the row maximum before f and
            normalize without ``eps``.
        doc: the one-line formula shown by ``repr``.
    """

    def __init__(
        self,
        name: str,
        weights: WeightFn,
        vjp: VjpFn | None = None,
        *,
        weights_: WeightFn | None = None,
        weights_and_vjp_: VjpFn | None = None,
        exponential: bool = False,
        doc: str = "",
    ) -> None:
        self.name = name
        self._weights = weights
        self._vjp = vjp
        self._weights_ = weights_
        self._weights_and_vjp_ = weights_and_vjp_
        self.exponential = exponential
        self.doc = doc

    def weights(self, s: Tensor) -> Tensor:
        """f(s) elementwise (for the exponential kernel, pass the max-shifted scores)."""
        return self._weights(s)

    def weights_(self, s: Tensor) -> Tensor:
        """f(s) computed in place where the kernel knows how (``s`` is overwritten); no autograd."""
        return self._weights_(s) if self._weights_ is not None else self._weights(s)

    def weights_and_vjp_(self, s: Tensor, grad_weights: Tensor) -> Tensor:
        """In place, no autograd: overwrite ``grad_weights`` with ``grad_weights * f'(s)`` and
        ``s`` with f(s); return f(s) (``s`` itself for the built-ins)."""
        if self._weights_and_vjp_ is not None:
            return self._weights_and_vjp_(s, grad_weights)
        grad_weights.copy_(self.weights_vjp(s, grad_weights))
        return self.weights_(s)

    def weights_vjp(self, s: Tensor, grad_weights: Tensor) -> Tensor:
        """``grad_weights * f'(s)``: the gradient of the scores given that of the weights."""
        if self._vjp is not None:
            return self._vjp(s, grad_weights)
        with torch.enable_grad():
            leaf = s.detach().requires_grad_(True)
            (grad_s,) = torch.autograd.grad(self._weights(leaf), leaf, grad_weights)
        return grad_s

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}: {self.doc})" if self.doc else f"Kernel({self.name!r})"


# --- the built-in kernels -------------------------------------------------------------------


def _ea(s: Tensor) -> Tensor:
    t = s * s
    return t / (1.0 + t)


def _ea_(s: Tensor) -> Tensor:
    # s^2 / (1 + s^2) = 1 / (1 + s^-2): three in-place passes (measured fastest on CPU), exact at
    # s = 0 (0^-2 = inf, 1/inf = 0) and without the cancellation of 1 - 1/(1 + s^2) for small s.
    return s.pow_(-2).add_(1.0).reciprocal_()


_ONE = torch.ones(())


def _ea_and_vjp_(s: Tensor, g: Tensor) -> Tensor:
    # with x = s^2 and u = 1 / (1 + x): f' = 2 s u^2 and f = x u; one temporary, no cancellation.
    # x is capped at the largest finite value, as in the C++ kernels, so that where s^2 overflows
    # f is 1 (x u), not inf * 0 = NaN (the forward's _ea_ gives 1 there too); g meets u before s.
    big = torch.finfo(s.dtype).max
    u = torch.addcmul(_ONE.to(s), s, s).clamp_max_(big).reciprocal_()
    g.mul_(u).mul_(s).mul_(u).mul_(2.0)
    return s.square_().clamp_max_(big).mul_(u)


def _squared_and_vjp_(s: Tensor, g: Tensor) -> Tensor:
    g.mul_(s).mul_(2.0)
    return s.square_()


def _relu_and_vjp_(s: Tensor, g: Tensor) -> Tensor:
    g.mul_(s > 0)
    return s.relu_()


def _relu2_and_vjp_(s: Tensor, g: Tensor) -> Tensor:
    s.relu_()
    g.mul_(s).mul_(2.0)
    return s.square_()


def _ea_vjp(s: Tensor, g: Tensor) -> Tensor:
    # d/ds s^2/(1+s^2) = 2s / (1+s^2)^2
    d = 1.0 + s * s
    return g * (2.0 * s) / (d * d)


_BUILTINS = [
    Kernel(
        "softmax",
        torch.exp,
        lambda s, g: g * torch.exp(s),
        weights_=torch.exp_,
        exponential=True,
        doc="f(s) = exp(s), dot-product attention (DPA), computed with the max-shift",
    ),
    Kernel(
        "expressive",
        _ea,
        _ea_vjp,
        weights_=_ea_,
        weights_and_vjp_=_ea_and_vjp_,
        doc="f(s) = s^2 / (1 + s^2), expressive attention (EA, Gros 2024); bounded in [0, 1)",
    ),
    Kernel(
        "squared",
        torch.square,
        lambda s, g: g * 2.0 * s,
        weights_=torch.square_,
        weights_and_vjp_=_squared_and_vjp_,
        doc="f(s) = s^2",
    ),
    Kernel(
        "relu",
        torch.relu,
        lambda s, g: g * (s > 0).to(g.dtype),
        weights_=torch.relu_,
        weights_and_vjp_=_relu_and_vjp_,
        doc="f(s) = max(s, 0)",
    ),
    Kernel(
        "relu2",
        lambda s: torch.relu(s).square(),
        lambda s, g: g * 2.0 * torch.relu(s),
        weights_=lambda s: s.relu_().square_(),
        weights_and_vjp_=_relu2_and_vjp_,
        doc="f(s) = max(s, 0)^2",
    ),
]

_REGISTRY: Registry[Kernel] = Registry("kernel", arg="kernel", entry="kernel", entry_type=Kernel)
for _kernel in _BUILTINS:
    _REGISTRY.register(_kernel.name, _kernel)
del _kernel
_BUILTIN_NAMES = frozenset(_REGISTRY.names())


def available_kernels() -> list[str]:
    """Names of the registered kernels, built-ins first."""
    return _REGISTRY.names()


def is_registered(kernel: Kernel) -> bool:
    """Whether ``kernel`` is the object registered under its name (not one that borrows a name)."""
    return _REGISTRY.find(kernel.name) is kernel


def get_kernel(kernel: str | Kernel) -> Kernel:
    """Look a kernel up by name (a :class:`Kernel` passes through).

    Raises:
        TypeError: ``kernel`` is neither a string nor a Kernel.
        ValueError: no kernel of that name is registered.
    """
    if isinstance(kernel, Kernel):
        return kernel
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a str or attnlab.kernels.Kernel, got {type(kernel).__name__}")
    return _REGISTRY.get(kernel)


def register_kernel(
    name: str,
    weights: WeightFn,
    vjp: VjpFn | None = None,
    *,
    doc: str = "",
    overwrite: bool = False,
) -> Kernel:
    """Register a non-exponential kernel f under ``name`` and return it.

    ``weights`` is checked on a grid of scores in [-50, 50]: it must keep the shape and return
    finite, non-negative values (a negative weight would make the normalizer meaningless).

    Raises:
        TypeError: ``name`` is not a str or ``weights``/``vjp`` is not callable.
        ValueError: the name is taken (and ``overwrite`` is False), is a built-in, or
            ``weights`` fails the check.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not callable(weights):
        raise TypeError(f"weights must be callable (Tensor -> Tensor), got {type(weights).__name__}")
    if vjp is not None and not callable(vjp):
        raise TypeError(f"vjp must be callable or None, got {type(vjp).__name__}")
    if name in _BUILTIN_NAMES:
        raise ValueError(f"name {name!r} is a built-in kernel and cannot be replaced")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"name {name!r} is already registered; pass overwrite=True to replace it")
    grid = torch.linspace(-50.0, 50.0, 1001)
    out = weights(grid)
    if not isinstance(out, Tensor) or out.shape != grid.shape:
        raise ValueError("weights must map a tensor of scores to a tensor of the same shape")
    if not torch.isfinite(out).all() or (out < 0).any():
        raise ValueError("weights must be finite and non-negative for scores in [-50, 50]")
    kernel = Kernel(name, weights, vjp, doc=doc)
    _REGISTRY.register(name, kernel, overwrite=True)
    return kernel


def unregister_kernel(name: str) -> None:
    """Remove a user kernel from the registry (built-ins stay).

    Raises:
        ValueError: ``name`` is a built-in or is not registered.
    """
    if name in _BUILTIN_NAMES:
        raise ValueError(f"name {name!r} is a built-in kernel and cannot be removed")
    if name not in _REGISTRY:
        raise ValueError(f"name {name!r} is not a registered kernel")
    _REGISTRY.unregister(name)
