"""``attention()``: exact kernelized attention with the call signature of torch's SDPA.

Shape legend, used throughout attnlab: ``B...`` any number of leading batch dims, ``H`` query
heads, ``H_kv`` key/value heads, ``L`` queries, ``S`` keys, ``D`` query/key dim, ``D_v`` value
dim. A boolean ``attn_mask`` is True where a query may attend to a key.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch
from torch import Tensor

from .backends import Problem, get_backend, resolve_backend
from .backends._common import hide_unseen_keys, run_hiding_unseen_keys
from .backends.reference import reference_attention
from .kernels import Kernel, get_kernel

__all__ = ["attention", "expressive_attention"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    kernel: str | Kernel = "softmax",
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    eps: float = 1e-6,
    backend: str = "auto",
    return_weights: bool = False,
    dropout_p: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention under a similarity kernel, laid out like ``scaled_dot_product_attention``.

    With s = scale * q.k and f the kernel (``attnlab.kernels``), each query's output is
    ``sum_j f(s_j) v_j / (sum_j f(s_j) + eps)`` over the keys it may see (softmax: the usual
    max-shifted softmax, no eps). A key is removed by zeroing its weight, never by adding -inf
    to s. A query that sees no key, or whose weights are all zero, gets a zero output row and
    finite gradients.

    Masked keys are inert: a key hidden from a query (by ``attn_mask`` or ``is_causal``) never
    contributes to that query's output, whatever the key holds (NaN or +-inf included). A key
    hidden from every query of its batch element and key/value head (padding) is inert in full:
    NaN or +-inf in its key or its value reaches no output and no gradient (its dk and dv are 0).
    Not covered: a non-finite value of a key that some query sees still reaches the queries it
    is hidden from (0 * NaN = NaN in the weighted sum), and a non-finite key may make their dq NaN.

    Args:
        query: (B..., H, L, D), float16/bfloat16/float32/float64.
        key: (B..., H_kv, S, D), same dtype and device as ``query``.
        value: (B..., H_kv, S, D_v).
        kernel: a registered kernel name (``softmax``, ``expressive``, ``squared``, ``relu``,
            ``relu2``, or one added by ``attnlab.kernels.register_kernel``) or a Kernel.
        attn_mask: optional bool tensor broadcastable to (B..., H, L, S); True = may attend.
        is_causal: query i sees keys j <= i (aligned top-left, as SDPA documents). May be
            combined with ``attn_mask`` (both must allow a key), which SDPA does not allow.
        scale: score scale, default 1/sqrt(D).
        enable_gqa: allow H to be a multiple of H_kv (grouped-query attention).
        eps: added to the normalizer of non-exponential kernels, >= 0.
        backend: ``"auto"`` (see ``attnlab.backends.resolve_backend``) or a registered name:
            ``reference``, ``chunked``, ``cpp`` (fused C++ CPU kernels; expressive, squared,
            relu, relu2), ``sdpa`` (softmax only), ``linear`` (squared only), and where
            registered ``flex`` and ``triton`` (see ``attnlab.backends.available_backends()``).
        return_weights: also return the normalized weights (B..., H, L, S); needs the
            ``reference`` backend (``auto`` picks it). With dropout these are the weights
            before dropout (they sum to 1 per row); the output uses the dropped ones.
        dropout_p: attention dropout, a real number in [0, 1), as in SDPA: each normalized
            weight is zeroed with probability ``dropout_p`` and the kept ones are scaled by
            1 / (1 - dropout_p), so ``out = dropout(p) @ v``. The mask comes from a
            counter-based hash of (seed, query row, key), with the seed drawn from torch's
            generator of the inputs' device at each call (``torch.manual_seed`` makes it
            reproducible); ``reference``, ``chunked`` and ``cpp`` draw the same mask for the
            same seed, other backends refuse dropout (``auto`` avoids them). Pass it only in
            training (``dropout_p=p if module.training else 0.0``); 0 changes nothing.

    Returns:
        The output (B..., H, L, D_v) in the input dtype, and the weights when asked for.

    Raises:
        TypeError: an argument has the wrong type (tensor, dtype, mask dtype, flag, number).
        ValueError: shapes, devices, names or values that do not fit (``dropout_p`` outside
            [0, 1)); a backend that cannot honour the kernel, ``return_weights`` or dropout.

    Example:
        >>> import torch, attnlab
        >>> q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)
        >>> out = attnlab.attention(q, k, v, kernel="expressive", is_causal=True)
        >>> out.shape
        torch.Size([2, 4, 16, 8])
        >>> out, w = attnlab.attention(q, k, v, kernel="expressive", return_weights=True)
        >>> torch.allclose(w.sum(-1), torch.ones(2, 4, 16), atol=1e-4)
        True
    """
    kern = get_kernel(kernel)
    problem, out_shape = canonicalize(
        query, key, value, attn_mask, is_causal, scale, enable_gqa, eps, kern, dropout_p=dropout_p,
        defer_finite_check=True,
    )
    return_weights = _check_flag("return_weights", return_weights)
    if backend == "auto":
        chosen = resolve_backend(kern, return_weights=return_weights, problem=problem)
    else:
        chosen = get_backend(backend)
    if not chosen.supports(kern):
        raise ValueError(f"backend {chosen.name!r} does not support kernel {kern.name!r}")
    refusal = chosen.accepts(problem)
    if refusal is not None:
        raise ValueError(refusal)
    if return_weights:
        if not chosen.returns_weights:
            raise ValueError(
                f"return_weights=True needs backend 'reference' or 'auto', got {chosen.name!r}"
            )
        out, weights = run_hiding_unseen_keys(lambda p: reference_attention(p, return_weights=True), problem)
        weights_shape = (*out_shape[:-1], weights.shape[-1])
        return out.reshape(out_shape), weights.reshape(weights_shape)
    return run_hiding_unseen_keys(chosen.run, problem).reshape(out_shape)


def expressive_attention(query: Tensor, key: Tensor, value: Tensor, **kwargs) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`attention` with ``kernel="expressive"``: weights s^2 / (1 + s^2), normalized.

    Example:
        >>> import torch, attnlab
        >>> q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
        >>> a = attnlab.expressive_attention(q, k, v)
        >>> torch.allclose(a, attnlab.expressive_attention(-q, k, v), atol=1e-6)  # q -> -q
        True
    """
    if "kernel" in kwargs:
        raise TypeError("expressive_attention() fixes kernel='expressive'; use attention() instead")
    return attention(query, key, value, kernel="expressive", **kwargs)


# --- validation ------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    """The exact type of ``value`` for messages: ``float``, ``numpy.bool``, ``torch.Tensor``."""
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _check_flag(name: str, value: object) -> bool:
    """``value`` as a Python bool: a bool or a numpy bool (``numpy.bool_``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {_type_name(value)}")


def _check_number(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {_type_name(value)}")
    value = float(value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def canonicalize(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    eps: float,
    kernel: Kernel,
    *,
    dropout_p: float = 0.0,
    defer_finite_check: bool = False,
) -> tuple[Problem, tuple[int, ...]]:
    """Validate an :func:`attention` call and bring it to the canonical 5-D layout of
    :class:`attnlab.backends.Problem`; returns it and the output shape. Approximations and
    backends called directly use it to validate exactly as :func:`attention` does. With
    ``dropout_p > 0`` it draws the call's dropout seed (:func:`draw_dropout_seed`).

    The masked-key rule for padding is applied here (``backends._common.hide_unseen_keys``):
    keys no query sees are zeroed where some key or value is non-finite. With
    ``defer_finite_check=True`` and no gradient needed, that check is left to the caller, which
    must then run the problem through ``backends._common.run_hiding_unseen_keys`` (as
    :func:`attention` does: it checks the output, which is cheaper when decoding).

    Raises:
        TypeError, ValueError: as :func:`attention`.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(t)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims (..., L, D), got shape {tuple(t.shape)}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}"
        )
    if not (query.dim() == key.dim() == value.dim()):
        raise ValueError(
            f"query, key and value must have the same number of dims, got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    is_causal = _check_flag("is_causal", is_causal)
    enable_gqa = _check_flag("enable_gqa", enable_gqa)
    eps = _check_number("eps", eps, positive=False)
    dropout_p = _check_dropout(dropout_p)

    # Bring (L, D) to (1, L, D) so that every call has a head dim.
    no_heads = query.dim() == 2
    if no_heads:
        query, key, value = query[None], key[None], value[None]
        if attn_mask is not None and attn_mask.dim() == 3:
            raise ValueError(
                f"attn_mask must have at most 2 dims for 2-D inputs, got shape {tuple(attn_mask.shape)}"
            )
    *batch, H, L, D = query.shape
    *kbatch, Hkv, S, Dk = key.shape
    *vbatch, Hv, Sv, Dv = value.shape
    if kbatch != batch or vbatch != batch:
        raise ValueError(
            f"query, key and value must share the batch dims {tuple(batch)} (no broadcasting), got "
            f"{tuple(kbatch)} for key and {tuple(vbatch)} for value"
        )
    if Dk != D:
        raise ValueError(f"key's last dim must equal query's ({D}), got {Dk}")
    if Sv != S or Hv != Hkv:
        raise ValueError(
            f"value must have key's heads and length ({Hkv}, {S}) in dims -3 and -2, got ({Hv}, {Sv})"
        )
    if D == 0 or Dv == 0:
        raise ValueError(f"head dims must be >= 1, got D={D} and D_v={Dv}")
    if H != Hkv:
        if not enable_gqa:
            raise ValueError(
                f"query has {H} heads and key/value {Hkv}; pass enable_gqa=True for grouped-query attention"
            )
        if Hkv == 0 or H % Hkv != 0:
            raise ValueError(f"with enable_gqa, query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    G = H // Hkv if Hkv else 1
    scale = 1.0 / math.sqrt(D) if scale is None else _check_number("scale", scale, positive=True)

    N = math.prod(batch)
    mask = None if attn_mask is None else _canonical_mask(attn_mask, query, (*batch, H, L, S), Hkv, G)
    problem = Problem(
        q=query.reshape(N, Hkv, G, L, D),
        k=key.reshape(N, Hkv, 1, S, D),
        v=value.reshape(N, Hkv, 1, S, Dv),
        mask=mask,
        kernel=kernel,
        is_causal=is_causal,
        scale=scale,
        eps=eps,
        dropout_p=dropout_p,
        dropout_seed=draw_dropout_seed(query.device) if dropout_p > 0 else 0,
    )
    out_shape = (L, Dv) if no_heads else (*batch, H, L, Dv)
    return hide_unseen_keys(problem, defer=defer_finite_check), out_shape


def _check_dropout(value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"dropout_p must be a real number in [0, 1), got {_type_name(value)}")
    value = float(value)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(f"dropout_p must be in [0, 1), got {value}")
    return value


def draw_dropout_seed(device: torch.device) -> int:
    """A 64-bit dropout seed from torch's default generator of ``device`` (the CPU generator for
    CPU tensors, the device's own for CUDA), so that ``torch.manual_seed`` fixes it."""
    words = torch.randint(0, 2**32, (2,), dtype=torch.int64, device=device).tolist()
    return words[0] | (words[1] << 32)


def _canonical_mask(mask: object, query: Tensor, target: tuple[int, ...], Hkv: int, G: int) -> Tensor:
    """Check a bool mask against (B..., H, L, S) and view it as (n, h, g, L|1, S|1)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {_type_name(mask)}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"attn_mask must be a bool tensor (True = may attend), got {mask.dtype}; "
            "for an additive float mask m use `m == 0` (non-exponential kernels have no additive form)"
        )
    if mask.device != query.device:
        raise ValueError(f"attn_mask must be on {query.device}, got {mask.device}")
    if mask.dim() > len(target):
        raise ValueError(f"attn_mask must have at most {len(target)} dims, got shape {tuple(mask.shape)}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(target):
        raise ValueError(
            f"attn_mask of shape {tuple(mask.shape)} does not broadcast to (B..., H, L, S) = {target}"
        )
    mask = mask.reshape((1,) * (len(target) - mask.dim()) + tuple(mask.shape))
    *mbatch, mh, ml, ms = mask.shape
    if any(d != 1 for d in mbatch):
        mask = mask.expand(*target[:-3], mh, ml, ms).reshape(-1, mh, ml, ms)
    else:
        mask = mask.reshape(1, mh, ml, ms)
    n = mask.shape[0]
    return mask.reshape(n, Hkv, G, ml, ms) if mh != 1 else mask.reshape(n, 1, 1, ml, ms)
