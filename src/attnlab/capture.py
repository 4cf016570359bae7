"""Capture what each attention layer of a model attends with: Q, K, V and the visibility.

:func:`capture_qkv` runs a model once and returns one :class:`Captured` per (layer, call):
the queries, keys and values *after* projection and positional encoding (rotary positions are
already applied), in attnlab's layout (q (B, H, L, D), k and v (B, H_kv, S, D)), and the mask
and causality the layer used. Replaying them through ``attnlab.attention`` reproduces the
layer's attention output, which is what the approximation studies measure against.

Two kinds of models are supported, with no change to their outputs:

- attnlab models (:class:`attnlab.models.TransformerLM`): through the model's one recording
  hook, :meth:`~attnlab.models.TransformerLM.record_attention`, which sees each chosen layer's
  attention inputs and leaves what the layer computes (the exact kernel, or a replacement
  installed by ``set_attention``) unchanged.
- Hugging Face transformers models: a recording function is registered in transformers'
  ``AttentionInterface`` (through :mod:`attnlab.integrations.hf`, which turns HF masks into
  attnlab's bool masks), the model is switched to it with ``set_attn_implementation``, run,
  and switched back. The recorder computes exact softmax attention (``attnlab.attention``),
  which is what eager/SDPA attention computes: Hugging Face models use the softmax kernel.

Example:
    >>> import torch
    >>> from attnlab.models import CausalLM, ModelConfig
    >>> model = CausalLM(ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=2))
    >>> idx = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(0))
    >>> caps = capture_qkv(model, idx)
    >>> [(c.layer, tuple(c.q.shape), c.is_causal) for c in caps]
    [(0, (1, 2, 6, 8), True), (1, (1, 2, 6, 8), True)]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .functional import attention

__all__ = ["Captured", "capture_qkv"]

_HF_NAME = "attnlab-capture"


@dataclass(frozen=True)
class Captured:
    """What one attention call of one layer saw (all tensors detached).

    Attributes:
        layer: the layer index (HF: the module's ``layer_idx``, else the order of the calls).
        q: (B, H, L, D) queries after projection and positions.
        k: (B, H_kv, S, D) keys; v: (B, H_kv, S, D_v) values.
        is_causal: query i sees keys j <= i (top-left aligned), on top of ``attn_mask``.
        attn_mask: None or a bool mask broadcastable to (B, H, L, S), True = may attend.
        scale: the score scale the layer used (None: 1/sqrt(D)).
        kernel: the layer's attention kernel (``"softmax"`` for Hugging Face models).
    """

    layer: int
    q: Tensor
    k: Tensor
    v: Tensor
    is_causal: bool
    attn_mask: Tensor | None
    scale: float | None = None
    kernel: str = "softmax"

    def exact(self, *, return_weights: bool = False, eps: float = 1e-6) -> Tensor | tuple[Tensor, Tensor]:
        """Replay the exact attention: ``attnlab.attention`` on the captured inputs."""
        return attention(self.q, self.k, self.v, kernel=self.kernel, attn_mask=self.attn_mask,
                         is_causal=self.is_causal, scale=self.scale, enable_gqa=self.q.shape[1] != self.k.shape[1],
                         eps=eps, return_weights=return_weights)


def _record(store: list[Captured], layer: int, kernel: str, q: Tensor, k: Tensor, v: Tensor, *,
            attn_mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None) -> None:
    mask = None if attn_mask is None else attn_mask.detach()
    store.append(Captured(layer, q.detach(), k.detach(), v.detach(), bool(is_causal), mask,
                          None if scale is None else float(scale), kernel))


def _run(model: Callable[..., Any], inputs: Tensor | Mapping[str, Any], tensor_key: str | None) -> None:
    with torch.no_grad():
        if isinstance(inputs, Mapping):
            model(**inputs)
        elif tensor_key is None:
            model(inputs)
        else:
            model(**{tensor_key: inputs})


def _check_layers(layers: Sequence[int] | None, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of ints or None, got {type(layers).__name__}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in layers):
        raise ValueError(f"layers must be ints in [0, {n}), got {list(layers)!r}")
    return sorted(set(layers))


def _capture_attnlab(model: Any, inputs: Any, layers: list[int]) -> list[Captured]:
    store: list[Captured] = []

    def recorder(layer: int, q: Tensor, k: Tensor, v: Tensor, kw: dict) -> None:
        _record(store, layer, model.config.kernel, q, k, v,
                **{n: kw.get(n) for n in ("attn_mask", "is_causal", "scale")})

    with model.record_attention(recorder, layers):
        _run(model, inputs, None)
    return store


def _capture_hf(model: Any, inputs: Any, layers: list[int]) -> list[Captured]:
    from .integrations import hf

    store: list[Captured] = []
    calls = [0]

    def recorder(q, k, v, *, module: Any, **kw):
        layer = getattr(module, "layer_idx", None)
        layer = calls[0] if layer is None else int(layer)
        calls[0] += 1
        if layer in layers:
            _record(store, layer, "softmax", q, k, v, attn_mask=kw.get("attn_mask"),
                    is_causal=kw.get("is_causal", False), scale=kw.get("scale"))
        return attention(q, k, v, kernel="softmax", **kw)

    def forward(module, query, key, value, attention_mask, *args, **kwargs):
        fn = functools.partial(recorder, module=module)
        return hf.attention_forward(module, query, key, value, attention_mask, *args, attention_fn=fn, **kwargs)

    hf.register_function(_HF_NAME, forward)
    previous = model.config._attn_implementation
    model.set_attn_implementation(_HF_NAME)
    try:
        _run(model, inputs, "input_ids")
    finally:
        model.set_attn_implementation(previous)
    return store


def _is_hf(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.") or hasattr(model, "set_attn_implementation")


def capture_qkv(model: torch.nn.Module, inputs: Tensor | Mapping[str, Any], *,
                layers: Sequence[int] | None = None) -> list[Captured]:
    """Run ``model`` on ``inputs`` once (under ``no_grad``) and return what its attention layers
    attended with, in call order (one entry per layer for a plain forward pass).

    Args:
        model: an :class:`attnlab.models.TransformerLM` or a Hugging Face transformers model
            whose attention goes through ``AttentionInterface`` (GPT-2, Llama, BERT, ...).
        inputs: token ids (B, L) (attnlab: ``model(idx)``; HF: ``model(input_ids=...)``), or a
            mapping of keyword arguments for ``model(**inputs)`` (e.g. with ``attention_mask``).
        layers: the layer indices to record (default: all).

    Returns:
        A list of :class:`Captured`.

    Raises:
        TypeError: ``model`` is neither kind of model, ``inputs`` is neither a tensor nor a
            mapping, or ``layers`` is not a sequence of ints.
        ValueError: a layer index out of range.
    """
    from .models import TransformerLM

    if not isinstance(inputs, (Tensor, Mapping)):
        raise TypeError(f"inputs must be a tensor of token ids or a mapping of model keyword arguments, "
                        f"got {type(inputs).__name__}")
    if isinstance(model, TransformerLM):
        return _capture_attnlab(model, inputs, _check_layers(layers, len(model.blocks)))
    if isinstance(model, torch.nn.Module) and _is_hf(model):
        n = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0))
        return _capture_hf(model, inputs, _check_layers(layers, n))
    raise TypeError(f"model must be an attnlab TransformerLM or a Hugging Face transformers model, "
                    f"got {type(model).__name__}")
