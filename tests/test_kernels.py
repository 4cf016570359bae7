"""The kernel registry and each kernel's closed-form derivative."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.kernels import Kernel, get_kernel, register_kernel, unregister_kernel
from attnlab.testing import assert_close

FORMULAS = {
    "softmax": torch.exp,
    "expressive": lambda s: s**2 / (1 + s**2),
    "squared": lambda s: s**2,
    "relu": lambda s: torch.clamp(s, min=0),
    "relu2": lambda s: torch.clamp(s, min=0) ** 2,
}


def test_builtins_are_registered():
    assert attnlab.available_kernels()[:5] == list(FORMULAS)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_weights_and_closed_form_vjp(name):
    s = torch.linspace(-6, 6, 101, dtype=torch.float64)
    kern = get_kernel(name)
    assert_close(kern.weights(s), FORMULAS[name](s))
    g = torch.randn(101, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    leaf = s.clone().requires_grad_()
    (want,) = torch.autograd.grad(FORMULAS[name](leaf), leaf, g)
    assert_close(kern.weights_vjp(s, g), want)


@pytest.mark.parametrize("name", [*FORMULAS, "user"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_fused_in_place_weights_and_vjp(name, dtype):
    """weights_and_vjp_ (the chunked backward's fused form) equals weights and vjp, overwrites
    both of its arguments, and keeps EA exact for tiny and huge scores (no cancellation)."""
    kern = Kernel("user", lambda s: s.abs() ** 3) if name == "user" else get_kernel(name)
    huge = 1e4 if not kern.exponential else 6.0  # softmax sees max-shifted scores only
    s = torch.cat([torch.linspace(-6, 6, 101), torch.tensor([0.0, 1e-20, -1e-4, huge])]).to(dtype)
    g = torch.randn(s.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    want_a, want_g = kern.weights(s), kern.weights_vjp(s, g)
    s_buf, g_buf = s.clone(), g.clone()
    a = kern.weights_and_vjp_(s_buf, g_buf)
    assert_close(a, want_a)
    assert_close(g_buf, want_g)
    if name != "user":
        assert a.data_ptr() == s_buf.data_ptr()
    if name == "expressive":
        assert (a[-3:-1] / want_a[-3:-1] - 1).abs().max() < 1e-5  # relative, where f ~ s^2


def test_expressive_shape():
    """EA is large for (anti)parallel q, k and small for orthogonal ones, bounded in [0, 1)."""
    f = get_kernel("expressive").weights
    s = torch.tensor([-100.0, -1.0, 0.0, 1.0, 100.0])
    a = f(s)
    assert a[2] == 0 and a[1] == a[3] == 0.5 and (a < 1).all() and a[0] > 0.99


def test_user_kernel_roundtrip_and_autograd_vjp():
    kern = register_kernel("abs", torch.abs, doc="|s|")
    try:
        assert "abs" in attnlab.available_kernels() and "abs" in repr(kern)
        q, k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
        assert torch.autograd.gradcheck(
            lambda q, k, v: attnlab.attention(q, k, v, kernel="abs", backend="chunked"), (q, k, v)
        )
        ref = attnlab.attention(q, k, v, kernel="abs", backend="reference")
        assert_close(attnlab.attention(q, k, v, kernel=kern, backend="chunked"), ref.detach())
    finally:
        unregister_kernel("abs")
    assert "abs" not in attnlab.available_kernels()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("", torch.abs), {}, TypeError, "name must be a non-empty str"),
        (("x", 3), {}, TypeError, "weights must be callable"),
        (("x", torch.abs, 3), {}, TypeError, "vjp must be callable or None"),
        (("softmax", torch.abs), {}, ValueError, "is a built-in kernel"),
        (("x", lambda s: s), {}, ValueError, "finite and non-negative"),
        (("x", lambda s: s.sum()), {}, ValueError, "same shape"),
    ],
)
def test_register_rejects(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        register_kernel(*args, **kwargs)


def test_register_twice_needs_overwrite():
    register_kernel("twice", torch.abs)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_kernel("twice", torch.square)
        assert register_kernel("twice", torch.square, overwrite=True).weights(torch.tensor(3.0)) == 9
    finally:
        unregister_kernel("twice")


def test_unregister_rejects():
    with pytest.raises(ValueError, match="built-in"):
        unregister_kernel("expressive")
    with pytest.raises(ValueError, match="not a registered kernel"):
        unregister_kernel("nope")


def test_kernel_object_passes_through():
    kern = Kernel("cube", lambda s: s.abs() ** 3)
    assert get_kernel(kern) is kern
