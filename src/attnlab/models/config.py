"""Model configuration, and the strict dataclass loading that every attnlab config uses.

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

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..kernels import available_kernels

__all__ = ["ModelConfig", "apply_overrides", "check_field_types", "from_dict", "parse_value", "to_dict"]

T = TypeVar("T")

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


# --- strict loading -------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (an int or a numeric string such as YAML's
    ``1e-3`` is accepted for float; dataclasses and tuples recursively). Raises TypeError
    naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise TypeError(errors[0] if len(errors) == 1 else f"{key}: no option of {tp} fits {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"{key} must be a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"{key} must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise TypeError(f"{key} must be {_type_name(tp)}, got bool")
    if not isinstance(value, tp):
        raise TypeError(f"{key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def check_field_types(obj: Any) -> None:
    """Type-check (and coerce int -> float) every field of a dataclass instance in place; call
    it first in ``__post_init__``.

    Raises:
        TypeError: a field whose value does not fit its annotation (names the field).
    """
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value = _coerce(getattr(obj, field.name), hints[field.name], field.name)
        object.__setattr__(obj, field.name, value)


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, strictly.

    Raises:
        TypeError: ``data`` is not a mapping, or a value has the wrong type (names the key).
        ValueError: a key that ``cls`` does not have (names the key), or a value that its
            ``__post_init__`` rejects (the message is prefixed by the enclosing key).
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"{prefix.rstrip('.') or cls.__name__} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ValueError(f"unknown key {prefix + str(key)!r} in {cls.__name__}; expected one of {names}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if not prefix:
            raise
        raise type(err)(f"{prefix}{err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts (tuples become lists), for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def parse_value(text: str) -> Any:
    """Parse an override's value as YAML (``4`` -> int, ``true`` -> bool, ``1e-3`` -> float)."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of nested dict ``data`` with ``key.sub=value`` overrides applied.

    Unknown keys are not checked here but by :func:`from_dict` afterwards.

    Raises:
        ValueError: an override without ``=`` or with an empty key.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override must look like 'section.key=value', got {item!r}")
        node = out
        *path, last = key.split(".")
        for i, part in enumerate(path):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {'.'.join(path[: i + 1])!r} is not a section")
            node = child
        node[last] = parse_value(text)
    return out
