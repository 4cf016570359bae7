"""Argument checks shared across attnlab, so that a bad int or registration reads the same everywhere."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` itself when it is an int (a bool is not) in ``[low, high]`` (either end optional).

    Raises:
        TypeError: ``value`` is not an int: "<name> must be an int, got <type>".
        ValueError: it is out of range: "<name> must be >= <low>, got <value>" (or "<= <high>",
            or "in [<low>, <high>]" when both ends are given).

    >>> check_int("steps", 3, 1)
    3
    >>> check_int("steps", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: steps must be >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    too_low, too_high = low is not None and value < low, high is not None and value > high
    if too_low or too_high:
        if low is not None and high is not None:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        bound = f">= {low}" if too_low else f"<= {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_registration(kind: str, registry: Mapping[str, object], name: object, fn: object, fn_name: str,
                       overwrite: bool, *, expected: type | None = None) -> None:
    """The checks of a ``register_<kind>(name, fn, overwrite=...)`` call into ``registry``
    (:class:`attnlab.registry.Registry` makes them for every registry).

    Raises:
        TypeError: ``name`` is not a non-empty str, or ``fn`` (the argument ``fn_name``) is not
            callable (not an instance of ``expected``, when given).
        ValueError: ``name`` is taken and ``overwrite`` is False.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if expected is not None and not isinstance(fn, expected):
        raise TypeError(f"{fn_name} must be a {expected.__name__}, got {type(fn).__name__}")
    if expected is None and not callable(fn):
        raise TypeError(f"{fn_name} must be callable, got {type(fn).__name__}")
    if name in registry and not overwrite:
        raise ValueError(f"{kind} {name!r} is already registered; pass overwrite=True to replace it")


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised by our caller at the first frame outside
    attnlab (``approximate_attention(method="linear")`` warns at the user's line, not in the
    registry), so that Python's default filters show it."""
    level, frame = 2, sys._getframe(2)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("attnlab."):
        level, frame = level + 1, frame.f_back
    return level


def deprecated_alias(fn: Callable[..., Any], qualname: str, message: str) -> Callable[..., Any]:
    """``fn`` under an old name (``qualname``, e.g. ``"linear_attention"``): the same call and
    signature, with ``DeprecationWarning(message)`` each time it is called."""

    @functools.wraps(fn)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(message, DeprecationWarning, stacklevel=_user_stacklevel())
        return fn(*args, **kwargs)

    alias.__name__, alias.__qualname__ = qualname.rpartition(".")[2], qualname
    alias.__doc__ = f"{message}."
    return alias
