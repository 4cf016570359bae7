"""attnlab.registry.Registry: one set of checks and messages for every registry by name."""

from __future__ import annotations

import pytest

from attnlab.registry import Registry


def test_register_get_names_unregister():
    reg = Registry("colour", arg="colour")
    red = reg.register("red", lambda: "#f00")
    reg.register("blue", lambda: "#00f")
    assert reg.get("red") is red and reg.names() == ["red", "blue"] and "red" in reg and len(reg) == 2
    assert reg.unregister("red") is red and reg.names() == ["blue"] and list(reg) == ["blue"]
    with pytest.raises(ValueError, match=r"colour must be one of \['blue'\], got 'red'"):
        reg.unregister("red")


def test_overwrite_only_when_asked():
    reg = Registry("colour")
    first, second = (lambda: 1), (lambda: 2)
    reg.register("red", first)
    with pytest.raises(ValueError, match="colour 'red' is already registered; pass overwrite=True"):
        reg.register("red", second)
    assert reg.get("red") is first
    reg.register("red", second, overwrite=True)
    assert reg.get("red") is second


@pytest.mark.parametrize("name, obj, exc, match", [
    ("", print, TypeError, "name must be a non-empty str"),
    (3, print, TypeError, "name must be a non-empty str"),
    ("x", 3, TypeError, "factory must be callable, got int"),
    ("auto", print, ValueError, "colour name 'auto' is reserved"),
])
def test_register_errors(name, obj, exc, match):
    reg = Registry("colour", entry="factory", reserved=("auto",))
    with pytest.raises(exc, match=match):
        reg.register(name, obj)
    assert reg.names() == []


def test_entry_type_and_get_errors():
    reg = Registry("spec", arg="task", entry="spec", entry_type=dict)
    with pytest.raises(TypeError, match="spec must be a dict, got list"):
        reg.register("a", [])
    reg.register("a", {})
    with pytest.raises(TypeError, match="task must be a str, got int"):
        reg.get(1)
    with pytest.raises(ValueError, match=r"task must be one of \['a'\], got 'b'"):
        reg.get("b")


def test_on_change_runs_after_every_change():
    calls = []
    reg = Registry("colour", on_change=lambda: calls.append(1))
    reg.register("red", print)
    reg.unregister("red")
    assert len(calls) == 2
