"""Shared fixtures: NaN-filled fresh allocations in every backend, seeded generators.

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


#: Why the registry-wide sweeps leave out backend 'triton' (see below).
TRITON_ROUTED = "backend 'triton' is swept by tests/test_triton_backend.py"


def pytest_collection_modifyitems(config, items):
    """Route backend 'triton' out of the registry-wide sweeps (test_attention.py,
    test_edge_cases.py: every test parametrized by ``backend``) to its own file. The sweeps use
    CPU tensors, mostly float64, which 'triton' refuses (float64 always, CPU tensors without the
    interpreter); its file runs the same checks in float32/bf16/fp16 on the device its kernels
    run on (CUDA, or the interpreter on CPU), at a bounded interpreter cost."""
    routed = pytest.mark.skip(reason=TRITON_ROUTED)
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "triton" and item.path.name != "test_triton_backend.py":
            item.add_marker(routed)
