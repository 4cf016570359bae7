"""Shared fixtures: NaN-filled fresh allocations in every backend, seeded generators.

Nothing is routed out of the sweeps here: each backend's record says which kernels, dtypes and
devices it takes, and the sweeps compare those and assert every refusal (tests/cases.py).

Without CUDA, Triton's CPU interpreter is switched on here, before anything imports attnlab or
triton: triton 3.x reads TRITON_INTERPRET when ``@triton.jit`` decorates a kernel (at the import
of ``attnlab.backends.triton_kernels``), and attnlab registers its ``triton`` backend only where
CUDA or the interpreter is available. A value already in the environment is kept.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from attnlab.backends import _common  # after the switch above


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
