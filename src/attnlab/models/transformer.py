"""A small pre-LN transformer: decoder-only causal LM and encoder masked LM, any attnlab kernel.

Shapes: B batch, L tokens, E = d_model, H query heads, H_kv key/value heads, D = E / H.
Each block is ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; the final norm feeds the
output projection, tied to the token embedding by default.

Attention in every layer is ``attnlab.attention(q, k, v, kernel=config.kernel, ...)`` unless a
hook replaces it: :meth:`TransformerLM.set_attention` swaps in any function with that signature
(an approximation from ``attnlab.approx``, say) in all or chosen layers and heads, without
retraining, and :meth:`TransformerLM.record_attention` hands each layer's attention inputs to a
function (the one capture mechanism: :func:`attnlab.capture.capture_qkv` builds on it)::

    >>> import torch
    >>> from attnlab.models import CausalLM, ModelConfig
    >>> model = CausalLM(ModelConfig(vocab_size=50, d_model=32, n_heads=4, kernel="expressive"))
    >>> idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    >>> seen = {}
    >>> with model.record_attention(lambda layer, q, k, v, kw: seen.update({layer: q.shape})):
    ...     logits = model(idx)
    >>> logits.shape, seen[0]
    (torch.Size([2, 10, 50]), torch.Size([2, 4, 10, 8]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, deprecated_alias
from .config import ModelConfig
from .self_attention import AttentionFn, Recorder, SelfAttention

__all__ = ["AttentionFn", "CausalLM", "KVCache", "MaskedLM", "Recorder", "SelfAttention", "TransformerLM"]

#: One (k, v) pair per layer, each (B, H_kv, S, D), after rotary positions.
KVCache = list[tuple[Tensor, Tensor]]


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = round(cfg.mlp_ratio * cfg.d_model)
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


def _norm(cfg: ModelConfig) -> nn.Module:
    return nn.RMSNorm(cfg.d_model) if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.d_model, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm1, self.attn = _norm(cfg), SelfAttention(cfg, layer)
        self.norm2, self.mlp = _norm(cfg), MLP(cfg)

    def forward(self, x: Tensor, rope, *, causal: bool, pad=None, cache=None):
        a, kv = self.attn(self.norm1(x), rope, causal=causal, pad=pad, cache=cache)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


class TransformerLM(nn.Module):
    """The shared body of :class:`CausalLM` and :class:`MaskedLM`.

    Args:
        config: a :class:`ModelConfig` with ``vocab_size`` set.

    Raises:
        TypeError: ``config`` is not a ModelConfig.
        ValueError: ``config.vocab_size`` is None, or ``config.kind`` does not fit the class.
    """

    causal: bool = True
    extra_tokens: int = 0  # embedding rows beyond vocab_size (the masked LM's mask token)

    def __init__(self, config: ModelConfig) -> None:
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be an attnlab.models.ModelConfig, got {type(config).__name__}")
        if config.vocab_size is None:
            raise ValueError("config.vocab_size must be set (an int >= 1) to build a model")
        if config.kind != ("causal" if self.causal else "masked"):
            raise ValueError(f"config.kind must be {'causal' if self.causal else 'masked'!r} "
                             f"for {type(self).__name__}, got {config.kind!r}")
        super().__init__()
        self.config = cfg = config
        with torch.random.fork_rng(devices=[]):  # default inits draw from global RNG: keep it intact
            self.tok_emb = nn.Embedding(cfg.vocab_size + self.extra_tokens, cfg.d_model)
            self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.positions == "learned" else None
            self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
            self.norm = _norm(cfg)
            self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.positions == "rotary":
            half = cfg.head_dim // 2
            inv = cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)
            angle = torch.arange(cfg.context, dtype=torch.float64)[:, None] * inv
            self.register_buffer("rope_cos", angle.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angle.sin().float(), persistent=False)
        self.reset_parameters(torch.Generator().manual_seed(cfg.seed))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; output projections of each
        residual branch scaled by 1/sqrt(2 n_layers) (GPT-2)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                scale = (2 * self.config.n_layers) ** -0.5 if name.endswith(("out.weight", "down.weight")) else 1.0
                nn.init.normal_(p, 0.0, std * scale, generator=generator)

    def _check_tokens(self, idx: Tensor, past: int = 0) -> None:
        if not isinstance(idx, Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            got = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, Tensor) else type(idx).__name__
            raise TypeError(f"idx must be a LongTensor (B, L), got {got}")
        if past + idx.shape[1] > self.config.context:
            raise ValueError(f"sequence length {past + idx.shape[1]} exceeds context {self.config.context}")

    def hidden(self, idx: Tensor, attention_mask: Tensor | None = None,
               cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Final-norm hidden states (B, L, E) and the per-layer (k, v) including ``cache``."""
        past = 0 if cache is None else cache[0][0].shape[2]
        self._check_tokens(idx, past)
        pad = None
        if attention_mask is not None:
            if attention_mask.dtype != torch.bool or attention_mask.shape != (idx.shape[0], past + idx.shape[1]):
                raise ValueError(f"attention_mask must be bool (B, S) = {(idx.shape[0], past + idx.shape[1])} "
                                 f"(True = real token), got {attention_mask.dtype} {tuple(attention_mask.shape)}")
            pad = attention_mask[:, None, None, :]
        L = idx.shape[1]
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(past, past + L, device=idx.device))
        else:
            rope = (self.rope_cos[past: past + L], self.rope_sin[past: past + L])
        new: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, rope, causal=self.causal, pad=pad, cache=None if cache is None else cache[i])
            new.append(kv)
        return self.norm(x), new

    def logits(self, h: Tensor) -> Tensor:
        """Output projection of hidden states to (..., vocab_size)."""
        if self.head is not None:
            return self.head(h)
        return F.linear(h, self.tok_emb.weight[: self.config.vocab_size])

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, L, vocab_size) of token ids ``idx`` (B, L).

        Args:
            idx: LongTensor (B, L), L <= context.
            attention_mask: optional bool (B, L), True = real token (False keys are ignored).
        """
        return self.logits(self.hidden(idx, attention_mask)[0])

    # --- hooks ---------------------------------------------------------------------------------

    def _layers(self, layers: Sequence[int] | None) -> list[SelfAttention]:
        n = len(self.blocks)
        chosen = range(n) if layers is None else layers
        for i in chosen:
            if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"layers must be ints in [0, {n}), got {list(chosen)!r}")
        return [self.blocks[i].attn for i in chosen]

    def set_attention(self, fn: AttentionFn | None, layers: Sequence[int] | None = None,
                      heads: Sequence[int] | None = None) -> None:
        """Replace exact attention by ``fn`` in ``layers`` (default all), optionally only for the
        query ``heads`` listed (the other heads keep exact attention); ``fn=None`` restores exact.

        ``fn(q, k, v, *, is_causal, attn_mask, scale, enable_gqa)`` must return (B, H, L, D),
        e.g. ``functools.partial(attnlab.approx.registry.approximate_attention, method=...)``.

        Raises:
            TypeError: ``fn`` is neither callable nor None.
            ValueError: a layer or head index out of range.
        """
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable or None, got {type(fn).__name__}")
        sel = None
        if heads is not None:
            H = self.config.n_heads
            if not all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h < H for h in heads):
                raise ValueError(f"heads must be ints in [0, {H}), got {list(heads)!r}")
            sel = torch.zeros(H, dtype=torch.bool)
            sel[list(heads)] = True
        for attn in self._layers(layers):
            attn.attention_fn, attn.attention_heads = fn, None if fn is None else sel

    @contextlib.contextmanager
    def record_attention(self, fn: Recorder, layers: Sequence[int] | None = None) -> Iterator[None]:
        """Within the block, call ``fn(layer, q, k, v, kwargs)`` in ``layers`` (default all) each
        time the layer attends, with what its attention function receives: q (B, H, L, D), k and
        v (B, H_kv, S, D) after rotary positions and with any cache prepended (not detached),
        and the keyword arguments (``is_causal``, ``attn_mask``, ``scale``, ``enable_gqa``).
        The model computes what it computes without it.

        Raises:
            TypeError: ``fn`` is not callable.
            ValueError: a layer index out of range.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        chosen = self._layers(layers)
        for attn in chosen:
            attn.recorder = fn
        try:
            yield
        finally:
            for attn in chosen:
                attn.recorder = None

    @contextlib.contextmanager
    def _capture_qkv(self, layers: Sequence[int] | None = None
                     ) -> Iterator[dict[int, tuple[Tensor, Tensor, Tensor]]]:
        store: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        with self.record_attention(lambda layer, q, k, v, kw: store.update({layer: (q.detach(), k.detach(),
                                                                                    v.detach())}), layers):
            yield store

    #: Deprecated: ``with capture_qkv(layers) as qkv`` filled ``qkv[layer] = (q, k, v)``; use
    #: :meth:`record_attention`, or :func:`attnlab.capture.capture_qkv` (which runs the model).
    capture_qkv = deprecated_alias(
        _capture_qkv, "TransformerLM.capture_qkv",
        "TransformerLM.capture_qkv is deprecated: use attnlab.capture.capture_qkv(model, inputs) "
        "or model.record_attention(fn)")


class CausalLM(TransformerLM):
    """Decoder-only language model: position t predicts token t + 1."""

    causal = True

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Extend ``idx`` (B, L) by ``max_new_tokens`` tokens, decoding with a KV cache.

        ``temperature == 0`` is greedy (argmax); otherwise tokens are sampled from
        softmax(logits / temperature), restricted to the ``top_k`` largest when given, with
        ``generator`` (required then, so that sampling is seeded).

        Raises:
            ValueError: ``max_new_tokens < 0``, ``temperature < 0``, ``top_k < 1``, sampling
                without a generator, or more tokens than ``context``.
        """
        check_int("max_new_tokens", max_new_tokens, 0)
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if top_k is not None:
            check_int("top_k", top_k, 1)
        if temperature > 0 and not isinstance(generator, torch.Generator):
            raise ValueError("generator must be a torch.Generator when temperature > 0 (seeded sampling)")
        self._check_tokens(idx, max_new_tokens)
        out, step, cache = idx, idx, None
        for _ in range(max_new_tokens):
            h, cache = self.hidden(step, cache=cache)
            logits = self.logits(h[:, -1]).float()
            if temperature == 0:
                step = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = logits.softmax(-1)
                step = torch.multinomial(probs.cpu(), 1, generator=generator).to(idx.device)
            out = torch.cat((out, step), dim=1)
        return out


class MaskedLM(TransformerLM):
    """Encoder masked language model: bidirectional attention, one extra mask token (id V)."""

    causal = False
    extra_tokens = 1

    @property
    def mask_token_id(self) -> int:
        """The id of the mask token: ``vocab_size`` (its embedding row is the extra one)."""
        return self.config.vocab_size
