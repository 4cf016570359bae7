"""Hugging Face transformers: run any attnlab kernel or approximation inside a transformers model.

:func:`register` adds one attention function per kernel to transformers' ``AttentionInterface``
(``"attnlab-softmax"``, ``"attnlab-expressive"``, ...), and :func:`register_approximate_attention`
adds ``"attnlab-approx-<name>"`` for an approximation of ``attnlab.approx.registry`` (its old
name ``register_approximation``, which ``attnlab.approx`` uses for adding a method, is a
deprecated alias). A model then
takes the name like any other implementation::

    from transformers import AutoModelForCausalLM
    from attnlab.integrations import hf
    hf.register()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="attnlab-expressive")
    model.set_attn_implementation("attnlab-softmax")  # or switch an existing model

transformers is imported only when these functions are called (``import attnlab`` does not
import it). The masks: each name is also registered in ``AttentionMaskInterface`` with
transformers' boolean SDPA mask builder, so padding reaches attnlab as a bool mask (True = may
attend), or as None when the mask is a plain causal or full one (causality then comes from
``is_causal`` or ``module.is_causal``, as for SDPA). A float additive mask passed by hand is
accepted when it holds only 0 (attend) and -inf or the dtype's minimum (blocked): any other
bias has no counterpart in a non-exponential kernel and is refused.

``output_attentions=True`` returns the weights, as eager attention does: the call then runs
``attention(..., return_weights=True)`` (the ``reference`` backend, which materializes them;
with dropout they are the weights before dropout). Approximations, which have no weights to
return, refuse it with the reason.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._checks import deprecated_alias
from ..functional import attention
from ..kernels import available_kernels, get_kernel

__all__ = ["attention_forward", "hf_mask_to_bool", "register", "register_approximate_attention",
           "register_approximation", "register_function", "weights_requested"]

PREFIX = "attnlab-"


def hf_mask_to_bool(attention_mask: Tensor | None) -> Tensor | None:
    """transformers' 4-D attention mask (B, 1 | H, L, S) as attnlab's bool mask (True = attend).

    A bool mask passes through; a float mask must be additive 0 / (-inf or <= finfo.min / 2).

    Raises:
        TypeError: the mask is not a tensor, or neither bool nor floating point.
        ValueError: a float mask holding a bias other than 0 and -inf/min.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise TypeError(f"attention_mask must be a tensor or None, got {type(attention_mask).__name__}")
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if not attention_mask.is_floating_point():
        raise TypeError(f"attention_mask must be bool or an additive float mask, got {attention_mask.dtype}")
    blocked = attention_mask <= torch.finfo(attention_mask.dtype).min / 2
    if bool((attention_mask.masked_fill(blocked, 0.0) != 0).any()):
        raise ValueError("attention_mask holds additive biases other than 0 and -inf/min; attnlab "
                         "kernels take a boolean visibility mask only (position biases such as ALiBi "
                         "or T5's are not supported)")
    return ~blocked


def attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    *,
    attention_fn: Callable[..., Tensor] = attention,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """An ``AttentionInterface`` function: (B, H, L, D) inputs in, (B, L, H, D) output out.

    Args:
        module: the calling attention module (its ``is_causal`` is used when ``is_causal`` is None).
        query: (B, H, L, D); key, value: (B, H_kv, S, D) with H a multiple of H_kv (GQA).
        attention_mask: None, bool (True = attend) or additive float, broadcastable to (B, H, L, S).
        dropout: attention dropout probability (transformers passes the config's attention
            dropout in training mode and 0 in eval); passed to ``attention_fn`` as ``dropout_p``
            when > 0 (attnlab's counter-based dropout, see :func:`attnlab.attention`).
        scaling: score scale (None: 1/sqrt(D)).
        is_causal: causal attention when no mask is given (query i sees keys j <= i, top-left,
            as SDPA); ignored for single-token queries (decoding sees the whole cache).
        attention_fn: ``fn(q, k, v, *, attn_mask, is_causal, scale, enable_gqa)``, and
            ``dropout_p`` when ``dropout > 0``.

    Returns:
        (output (B, L, H, D), weights (B, H, L, S) or None): the weights when the model asked for
        them (``output_attentions=True``, see :func:`weights_requested`), else None.

    Raises:
        ValueError: ``softcap`` or ``position_bias`` given, a float mask with biases, a
            dropout outside [0, 1), or weights requested from an ``attention_fn`` without a
            ``return_weights`` parameter (approximations).
        TypeError: ``dropout > 0`` for an ``attention_fn`` without ``dropout_p`` (approximations).
    """
    for unsupported in ("softcap", "position_bias", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"{unsupported} is not supported by attnlab attention")
    mask = hf_mask_to_bool(attention_mask)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and mask is None and query.shape[2] > 1
    extra = {"dropout_p": dropout} if dropout else {}  # 0 and None: no dropout, any attention_fn
    if weights_requested(kwargs):
        if "return_weights" not in inspect.signature(attention_fn).parameters:
            raise ValueError(f"output_attentions=True: {_name(attention_fn)} cannot return attention weights "
                             "(an approximation materializes none); use attn_implementation='attnlab-<kernel>' "
                             "or 'eager' for them, or output_attentions=False")
        extra["return_weights"] = True
    out = attention_fn(query, key, value, attn_mask=mask, is_causal=causal, scale=scaling,
                       enable_gqa=query.shape[1] != key.shape[1], **extra)
    out, weights = out if isinstance(out, tuple) else (out, None)
    return out.transpose(1, 2).contiguous(), weights


def weights_requested(kwargs: dict[str, Any]) -> bool:
    """Whether the calling transformers model asked for attention weights (``output_attentions``):
    transformers < 5 passes ``output_attentions`` to the attention function, and so do some
    models of 5.x (BERT); the others (GPT-2, Llama) record the attention modules' second output
    through hooks that are active only while weights are asked for, which this checks
    (``transformers.utils.output_capturing``)."""
    if kwargs.get("output_attentions"):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # an older transformers: output_attentions arrives in kwargs
        return False
    collecting = _active_collector.get()
    return bool(collecting) and ("attentions" in collecting or "cross_attentions" in collecting)


def _name(fn: Callable[..., Any]) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    keywords = getattr(fn, "keywords", {})
    what = f"method {keywords['method']!r}" if "method" in keywords else getattr(inner, "__name__", repr(inner))
    return f"attention function {what}"


def register_function(name: str, fn: Callable[..., tuple[Tensor, None]]) -> str:
    """Register any attention function under ``name`` in transformers' ``AttentionInterface``,
    with transformers' boolean mask builder for it in ``AttentionMaskInterface`` (without it a
    custom name receives no padding mask). Returns ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def register(kernels: list[str] | None = None) -> list[str]:
    """Register ``"attnlab-<kernel>"`` for each kernel (default: every registered kernel).

    Returns:
        The registered implementation names.

    Raises:
        ValueError: an unknown kernel name.
        ImportError: transformers is not installed.
    """
    names = available_kernels() if kernels is None else list(kernels)
    for name in names:
        get_kernel(name)  # validates
    return [register_function(PREFIX + name, functools.partial(
        attention_forward, attention_fn=functools.partial(attention, kernel=name))) for name in names]


def register_approximate_attention(name: str, method: str, **options: Any) -> str:
    """Register ``"attnlab-approx-<name>"``: attention computed by
    ``attnlab.approx.registry.approximate_attention(q, k, v, method=method, **options)``.

    Example: ``register_approximate_attention("top8", "topk", top_k=8, kernel="expressive")``.

    Raises:
        TypeError: ``name`` is not a non-empty str.
        ValueError: ``method`` is not a registered approximation.
    """
    from ..approx.registry import approximate_attention, get_approximation

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    get_approximation(method)  # validates the method before registering
    fn = functools.partial(approximate_attention, method=method, **options)
    return register_function(f"{PREFIX}approx-{name}", functools.partial(attention_forward, attention_fn=fn))


#: Deprecated: :func:`register_approximate_attention` (``attnlab.approx.register_approximation``
#: adds a method to the approximation registry; this one registers a Hugging Face implementation).
register_approximation = deprecated_alias(
    register_approximate_attention, "register_approximation",
    "attnlab.integrations.hf.register_approximation is deprecated: use hf.register_approximate_attention "
    "(attnlab.approx.register_approximation is the one that adds an approximation method)")
