"""Built-in backends registered only where they can run (``triton``, ``flex``) say why they are
missing, instead of the unknown-name list: through get_backend and through attention()."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import attnlab
from attnlab import backends

_find_spec = importlib.util.find_spec


@pytest.mark.parametrize(("installed", "cuda", "interpret", "why"), [
    (False, True, None, r"triton is not installed \(pip install triton"),
    (True, False, None, r"there is no CUDA device .* set TRITON_INTERPRET=1 before importing attnlab"),
    (True, False, "1", r"it was not registered when attnlab was imported \(TRITON_INTERPRET=1, .* must be set before"),
], ids=["not-installed", "no-cuda", "interpreter-requested-too-late"])
def test_an_unregistered_triton_says_why(monkeypatch, installed, cuda, interpret, why):
    monkeypatch.setattr(backends, "_REGISTRY", backends._REGISTRY.copy())
    if "triton" in backends._REGISTRY:
        backends._REGISTRY.unregister("triton")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        (object() if installed else None) if name == "triton" else _find_spec(name, *args)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if interpret is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
    message = rf"backend 'triton' is not available here: {why}.*the available ones are \['reference'"
    with pytest.raises(ValueError, match=message):
        backends.get_backend("triton")
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match=message):
        attnlab.attention(q, q, q, kernel="expressive", backend="triton")


def test_an_unregistered_flex_says_why(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", backends._REGISTRY.copy())
    if "flex" in backends._REGISTRY:
        backends._REGISTRY.unregister("flex")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match=r"backend 'flex' is not available here: it is registered only where CUDA "
                                         r"is available.*no backward on CPU.*use backend 'chunked'"):
        attnlab.attention(q, q, q, kernel="expressive", backend="flex")


def test_an_unknown_name_still_lists_the_backends():
    with pytest.raises(ValueError, match=r"backend must be 'auto' or one of \['reference'.*got 'trition'"):
        backends.get_backend("trition")
