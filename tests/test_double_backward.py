"""Double backward: the reference backend supports it (gradgradcheck); every other backend raises
a RuntimeError that names it and the fix, on every path, instead of returning gradients that
carry no graph (which ``once_differentiable`` alone let through when the upstream gradient does
not require grad)."""

from __future__ import annotations

import re

import pytest
import torch

import attnlab
from attnlab.backends import available_backends
from cases import backend_kernel_pairs

FIX = "use backend='reference' for double backward"
# "name", not "backend": tests/conftest.py would route backend=triton out of this file, and its
# backward refuses before any kernel runs (the forward runs on the interpreter, in float32).
PAIRS = backend_kernel_pairs()


def _inputs(name: str, requires_grad: bool = True):
    dtype = torch.float32 if name == "triton" else torch.float64
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 5, 4, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(3)]


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")  # triton's float32
@pytest.mark.parametrize(("name", "kernel"), PAIRS, ids=lambda x: x)
def test_double_backward_matches_the_reference_or_raises_clearly(name, kernel):
    q, k, v = _inputs(name)

    def fn(q, k, v):
        return attnlab.attention(q, k, v, kernel=kernel, backend=name, is_causal=True)

    if name == "reference":
        assert torch.autograd.gradgradcheck(fn, (q, k, v))
        return
    message = re.escape(f"backend '{name}'") + ".*does not support double backward.*" + re.escape(FIX)
    # an upstream gradient without grad (out.sum()): the case that used to return None silently
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.grad(fn(q, k, v).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.gradgradcheck(fn, (q, k, v))
    # first-order gradients are unaffected
    assert torch.autograd.grad(fn(q, k, v).sum(), (q, k, v))[0].shape == q.shape


@pytest.mark.parametrize("kernel", ["softmax", "expressive", "squared"])
def test_auto_double_backward_raises_clearly(kernel):
    q, k, v = _inputs("auto")
    out = attnlab.attention(q, k, v, kernel=kernel)
    with pytest.raises(RuntimeError, match=re.escape(FIX)):
        (dq,) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
        dq.sum().backward()


def test_reference_double_backward_with_dropout():
    q, k, v = _inputs("reference")

    def fn(q, k, v):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same mask at every evaluation
            return attnlab.attention(q, k, v, kernel="expressive", backend="reference", dropout_p=0.3)

    assert torch.autograd.gradgradcheck(fn, (q, k, v))


def test_no_backend_is_left_out():
    assert {name for name, _ in PAIRS} == set(available_backends())
