"""One registry by name for everything attnlab looks up by name (DESIGN.md section 5).

A :class:`Registry` maps names to entries (a source factory, a task, a kernel, a backend, an
approximation, an oracle, a study) with the same checks and the same messages everywhere::

    >>> from attnlab.registry import Registry
    >>> colours = Registry("colour", arg="colour")
    >>> colours.register("red", lambda: "#f00")  # doctest: +ELLIPSIS
    <function <lambda> at ...>
    >>> colours.names()
    ['red']
    >>> colours.get("blue")
    Traceback (most recent call last):
    ...
    ValueError: colour must be one of ['red'], got 'blue'
    >>> colours.register("red", print)
    Traceback (most recent call last):
    ...
    ValueError: colour 'red' is already registered; pass overwrite=True to replace it

Registering replaces nothing unless ``overwrite=True``; names are non-empty strings; an entry is
callable unless the registry was given an ``entry_type``, which it must then be an instance of.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from ._checks import check_registration

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order.

    Args:
        kind: what an entry is, for messages ("source", "task", "backend").
        arg: the argument a user passes the name as, for :meth:`get`'s messages ("source").
        entry: the argument an entry is passed as, for :meth:`register`'s messages ("factory").
        entry_type: entries must be instances of it (default: entries must be callable).
        reserved: names that can never be registered (e.g. ``"auto"`` for backends).
        on_change: called after every register / unregister (e.g. to refresh a docstring).
    """

    def __init__(self, kind: str, *, arg: str = "name", entry: str = "fn", entry_type: type | None = None,
                 reserved: Iterable[str] = (), on_change: Callable[[], None] | None = None) -> None:
        self.kind, self.arg, self.entry, self.entry_type = kind, arg, entry, entry_type
        self.reserved = frozenset(reserved)
        self._entries: dict[str, T] = {}
        self._on_change = on_change

    def check(self, name: object, obj: object, *, overwrite: bool = False) -> None:
        """The checks of :meth:`register` alone (for callers that validate more before storing).

        Raises:
            TypeError: ``name`` is not a non-empty str, or ``obj`` is not callable (not an
                ``entry_type`` when one is set).
            ValueError: ``name`` is reserved, or taken and ``overwrite`` is False.
        """
        check_registration(self.kind, self._entries, name, obj, self.entry, overwrite, expected=self.entry_type)
        if name in self.reserved:
            raise ValueError(f"{self.kind} name {name!r} is reserved")

    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Store ``obj`` under ``name`` and return it (so it works as a decorator's body).

        Raises:
            TypeError / ValueError: see :meth:`check`.
        """
        self.check(name, obj, overwrite=overwrite)
        self._entries[name] = obj
        if self._on_change is not None:
            self._on_change()
        return obj

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry.

        Raises:
            ValueError: ``name`` is not registered (the message lists the registered names).
        """
        entry = self.get(name)
        del self._entries[name]
        if self._on_change is not None:
            self._on_change()
        return entry

    def get(self, name: str) -> T:
        """The entry registered under ``name``.

        Raises:
            TypeError: ``name`` is not a str.
            ValueError: nothing is registered under ``name``; the message lists the names.
        """
        if not isinstance(name, str):
            raise TypeError(f"{self.arg} must be a str, got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"{self.arg} must be one of {self.names()}, got {name!r}") from None

    def find(self, name: str) -> T | None:
        """The entry registered under ``name``, or None (no checks: for hot paths)."""
        return self._entries.get(name)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def values(self) -> list[T]:
        """Registered entries, in registration order."""
        return list(self._entries.values())

    def copy(self) -> Registry[T]:
        """A registry with the same settings and entries (tests swap one in to register freely)."""
        new = Registry(self.kind, arg=self.arg, entry=self.entry, entry_type=self.entry_type,
                       reserved=self.reserved, on_change=self._on_change)
        new._entries = dict(self._entries)
        return new

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
