"""Model configuration; the strict dataclass loading every attnlab config uses is :mod:`attnlab._strict`.

Configs are plain dataclasses. :func:`from_dict` builds one (nested ones too) from a mapping,
refusing unknown keys and values of the wrong type with an error that names the dotted key
(``model.n_layer``); :func:`apply_overrides` applies ``key=value`` strings such as
``model.n_layers=4``. Each config's ``__post_init__`` rejects impossible values, so a typo or an
impossible shape fails before any work starts::

    >>> cfg = from_dict(ModelConfig, {"d_model": 64, "n_heads": 4, "vocab_size": 100})
    >>> cfg.head_dim
    16
    >>> from_dict(ModelConfig, {"n_layer": 2})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown key 'n_layer' in ModelConfig; expected one of [...]
"""

from __future__ import annotations

from dataclasses import dataclass

from .._strict import apply_overrides, check_field_types, from_dict, parse_value, to_dict
from ..kernels import available_kernels

__all__ = ["ModelConfig", "apply_overrides", "check_field_types", "from_dict", "parse_value", "to_dict"]

NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rotary", "learned")
KINDS = ("causal", "masked")


@dataclass
class ModelConfig:
    """A pre-LN transformer language model.

    Attributes:
        kind: ``"causal"`` (decoder-only, next-token) or ``"masked"`` (encoder, masked LM).
        vocab_size: number of token ids V; ``None`` until the data source sets it. A masked
            LM adds one embedding row for its mask token (id V).
        context: the longest sequence the model accepts (positions 0 .. context - 1).
        n_layers, d_model: depth and width.
        n_heads: query heads H; ``d_model`` must be divisible by H.
        n_kv_heads: key/value heads (grouped-query attention when < H); ``None`` means H.
        mlp_ratio: hidden width of the MLP is ``round(mlp_ratio * d_model)``.
        kernel: the attention kernel, a name in ``attnlab.available_kernels()``.
        norm: ``"rmsnorm"`` or ``"layernorm"``.
        positions: ``"rotary"`` (RoPE on q and k) or ``"learned"`` (absolute embeddings).
        rope_base: RoPE frequency base: pair i of a head turns by position * base^(-2i/D).
        tie_embeddings: the output projection is the token embedding matrix.
        bias: biases in the linear layers.
        attn_eps: normalizer eps of non-exponential kernels (see ``attnlab.attention``).
        attn_dropout: attention dropout in [0, 1), applied in training mode only (``dropout_p``
            of ``attnlab.attention``).
        backend: attention backend name (``"auto"`` by default).
        init_std: standard deviation of the normal weight init.
        seed: the seed of the weight init (a local generator; global RNG state is untouched).
    """

    kind: str = "causal"
    vocab_size: int | None = None
    context: int = 128
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int | None = None
    mlp_ratio: float = 4.0
    kernel: str = "softmax"
    norm: str = "rmsnorm"
    positions: str = "rotary"
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    bias: bool = False
    attn_eps: float = 1e-6
    attn_dropout: float = 0.0
    backend: str = "auto"
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)
        for key in ("context", "n_layers", "d_model", "n_heads", "n_kv_heads", "vocab_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        for key, allowed in (("kind", KINDS), ("norm", NORMS), ("positions", POSITIONS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if self.kernel not in available_kernels():
            raise ValueError(f"kernel must be one of {available_kernels()}, got {self.kernel!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"d_model / n_heads must be even for rotary positions, got {self.head_dim}")
        for key in ("mlp_ratio", "rope_base", "init_std"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not self.attn_eps >= 0:
            raise ValueError(f"attn_eps must be >= 0, got {self.attn_eps}")
        if not 0 <= self.attn_dropout < 1:
            raise ValueError(f"attn_dropout must be in [0, 1), got {self.attn_dropout}")

    @property
    def head_dim(self) -> int:
        """D = d_model / n_heads."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """H_kv: ``n_kv_heads``, or ``n_heads`` when unset."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads
