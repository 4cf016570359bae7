"""Argument checks shared by the statistics (each raises TypeError/ValueError naming the argument)."""

from __future__ import annotations

import math

import numpy as np


def _level(level: object) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)):
        raise TypeError(f"level must be a float, got {type(level).__name__}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(level)


def _rng(seed: object) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy.random.Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def _one_d(name: str, arr: np.ndarray, length: int | None, length_of: str) -> None:
    """Check that ``arr`` is a non-empty 1-D array, of ``length`` (that of ``length_of``) when given."""
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if length is not None and arr.size != length:
        raise ValueError(f"{name} and {length_of} must have the same length, got {arr.size} and {length}")


def _vector(name: str, x: object, length: int | None = None, length_of: str = "") -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D array of numbers, got {type(x).__name__}") from None
    _one_d(name, arr, length, length_of)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def _bools(name: str, x: object, length: int | None = None, length_of: str = "") -> np.ndarray:
    arr = np.asarray(x)
    _one_d(name, arr, length, length_of)
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise TypeError(f"{name} must hold bools (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


def _groups(groups: object, length: int, length_of: str) -> tuple[np.ndarray, int]:
    """Group labels -> (integer codes 0..G-1 per unit, G)."""
    arr = np.asarray(groups)
    _one_d("groups", arr, length, length_of)
    _, codes = np.unique(arr, return_inverse=True)
    return codes.reshape(-1), int(codes.max()) + 1


def _name(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)
