"""The models' attention layer: multi-head (optionally grouped-query) self-attention with rotary
positions, a KV cache, a replaceable attention function and a recording hook.

Its parameters are one fused ``qkv`` projection and ``out`` (the keys of every saved
checkpoint); :class:`attnlab.nn.MultiheadAttention` is the torch-shaped drop-in for users' own
models. :class:`~attnlab.models.transformer.TransformerLM` drives the hooks
(``set_attention``, ``record_attention``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..functional import attention
from ..problem import causal_visible
from .config import ModelConfig

__all__ = ["AttentionFn", "Recorder", "SelfAttention"]

#: ``fn(q, k, v, *, is_causal, attn_mask, scale, enable_gqa) -> out``, as ``attnlab.attention``.
AttentionFn = Callable[..., Tensor]
#: ``fn(layer, q, k, v, kwargs)``: what a layer's attention function is about to receive, with
#: ``kwargs`` its keyword arguments (``is_causal``, ``attn_mask``, ``scale``, ``enable_gqa``).
Recorder = Callable[[int, Tensor, Tensor, Tensor, dict], None]


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on (B, h, L, D) with the two halves of D as the pairs: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class SelfAttention(nn.Module):
    """Multi-head (optionally grouped-query) self-attention with an overridable attention hook."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.cfg = layer, cfg
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.attention_fn: AttentionFn | None = None  # None: exact attention under cfg.kernel
        self.attention_heads: Tensor | None = None  # bool (H,): heads that use attention_fn
        self.recorder: Recorder | None = None  # set by TransformerLM.record_attention

    def exact(self, q: Tensor, k: Tensor, v: Tensor, **kw) -> Tensor:
        """Exact attention under the configured kernel (the default hook), with the configured
        attention dropout in training mode only."""
        return attention(q, k, v, kernel=self.cfg.kernel, eps=self.cfg.attn_eps,
                         backend=self.cfg.backend, dropout_p=self.cfg.attn_dropout if self.training else 0.0, **kw)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, *, causal: bool,
                pad: Tensor | None = None, cache: tuple[Tensor, Tensor] | None = None,
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend over x (B, L, E) and the cached keys; returns (output, the new (k, v))."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], -1)
        q = q.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        past = 0 if cache is None else cache[0].shape[2]
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        # Causal with a cache is bottom-right aligned: new query i sits at position past + i.
        mask = pad
        is_causal = causal and past == 0
        if causal and past > 0 and L > 1:
            tri = causal_visible(past, past + L, past + L, x.device)
            mask = tri if mask is None else mask & tri
        kw = dict(is_causal=is_causal, attn_mask=mask, scale=1.0 / math.sqrt(self.head_dim),
                  enable_gqa=self.n_heads != self.n_kv)
        if self.recorder is not None:
            self.recorder(self.layer, q, k, v, kw)
        if self.attention_fn is None:
            y = self.exact(q, k, v, **kw)
        elif self.attention_heads is None:
            y = self.attention_fn(q, k, v, **kw)
        else:  # only the chosen heads take the replacement
            sel = self.attention_heads.to(x.device)[:, None, None]
            y = torch.where(sel, self.attention_fn(q, k, v, **kw), self.exact(q, k, v, **kw))
        return self.out(y.transpose(1, 2).reshape(B, L, -1)), (k, v)
