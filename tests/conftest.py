"""Shared fixtures: NaN-filled fresh allocations in every backend, seeded generators."""

from __future__ import annotations

import pytest
import torch

from attnlab.backends import _common


@pytest.fixture(autouse=True)
def _nan_fill_fresh_allocations(monkeypatch):
    """A backend output element that is never written becomes NaN and fails the comparison."""
    monkeypatch.setattr(_common, "FILL_FRESH_WITH_NAN", True)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight a busy machine's other jobs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
