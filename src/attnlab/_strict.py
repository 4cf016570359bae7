"""Strict dataclass configs, shared by every attnlab config (model, data, train, run).

Configs are plain dataclasses. :func:`from_dict` builds one (nested ones too) from a mapping,
refusing unknown keys and values of the wrong type with an error that names the dotted key
(``model.n_layer``); :func:`apply_overrides` applies ``key=value`` strings such as
``model.n_layers=4``; :func:`read_yaml_mapping` reads a config file. Each config calls
:func:`check_field_types` first in its ``__post_init__`` and rejects impossible values, so a
typo or an impossible shape fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["apply_overrides", "check_field_types", "from_dict", "parse_value", "read_yaml_mapping", "to_dict"]

T = TypeVar("T")


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


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping a YAML config file holds (an empty file: ``{}``).

    Raises:
        ValueError: a missing file, malformed YAML or a top level that is not a mapping (names the file).
    """
    import yaml

    if not Path(path).is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data
