"""The ``linear`` backend (squared kernel through degree-2 features) and its decoding state.

The record-driven sweep (test_attention.py, test_edge_cases.py) compares it on every case its
record (``masks="key-padding"``) accepts and asserts its refusals; this file checks that the
record refuses exactly the masks that vary over queries, and sweeps the longer cases that cross
several chunks.
"""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.backends import get_backend
from attnlab.backends.linear import SquaredKernelState, degree2_features, linear_attention, linear_refusal
from attnlab.functional import canonicalize
from attnlab.testing import assert_close, plain_attention
from cases import CASES, Case

SQUARED = attnlab.get_kernel("squared")
# Key-padding masks from every mask kind of the registry sweep: one row, the same for all queries.
EXTRA = [
    Case(L=70, S=70, causal=True, mask="padding"),
    Case(L=45, S=70, causal=True, H=4, Hkv=2),
    Case(L=70, S=45, Dv=5),
]


def _problem(case: Case, q, k, v, mask):
    return canonicalize(q, k, v, mask, case.causal, None, case.gqa, 1e-6, SQUARED)


def _linear(case: Case, q, k, v, mask, chunk_size: int = 16):
    problem, shape = _problem(case, q, k, v, mask)
    return linear_attention(problem, chunk_size=chunk_size).reshape(shape)


def _reference(case: Case, q, k, v, mask):
    return attnlab.attention(q, k, v, kernel="squared", attn_mask=mask, is_causal=case.causal,
                             enable_gqa=case.gqa, backend="reference")


@pytest.mark.parametrize("case", CASES + EXTRA, ids=lambda c: c.id)
def test_the_record_refuses_exactly_the_masks_that_vary_over_queries(case):
    q, k, v, mask = case.make(torch.float32)
    problem = _problem(case, q, k, v, mask)[0]
    reason = get_backend("linear").refusal(problem)
    assert reason == linear_refusal(problem)  # the direct call says what the record says
    if reason is not None:
        assert case.mask in ("random", "empty-rows")  # only query-dependent masks are refused
        with pytest.raises(ValueError, match="attn_mask must be the same for every query with backend 'linear'"):
            attnlab.attention(q, k, v, kernel="squared", attn_mask=mask, is_causal=case.causal,
                              enable_gqa=case.gqa, backend="linear")
    else:
        assert case.mask not in ("random", "empty-rows") or bool((mask == mask[..., :1, :]).all())


@pytest.mark.parametrize("case", EXTRA, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cases_across_several_chunks_match_the_reference(case, dtype):
    """Accepted cases match the float64 reference (the sweep's CASES run in test_attention.py)."""
    q, k, v, mask = case.make(dtype, requires_grad=True)
    qr, kr, vr, _ = case.make(torch.float64, requires_grad=True)
    ref = _reference(case, qr, kr, vr, mask)
    out = _linear(case, q, k, v, mask)
    assert out.dtype == dtype
    assert_close(out, ref.detach())
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for name, got, want in zip("qkv", torch.autograd.grad(out, (q, k, v), g.to(dtype)),
                               torch.autograd.grad(ref, (qr, kr, vr), g), strict=True):
        assert_close(got, want, what=f"d{name}")


def test_registered_backend_is_the_same_function():
    case = Case(causal=True, mask="padding")
    q, k, v, mask = case.make()
    out = attnlab.attention(q, k, v, kernel="squared", attn_mask=mask, is_causal=True, backend="linear")
    assert_close(out, _reference(case, q, k, v, mask))


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64, 500])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_chunk_size_does_not_change_the_result(chunk_size, causal):
    case = Case(B=1, H=4, Hkv=2, L=37, S=41, causal=causal, mask="padding")
    q, k, v, mask = case.make(requires_grad=True)
    out = _linear(case, q, k, v, mask, chunk_size=chunk_size)
    ref = _reference(case, q, k, v, mask)
    assert_close(out, ref.detach())
    g = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_low_precision_follows_flash_attention_rule(dtype, causal):
    case = Case(H=4, Hkv=2, L=50, causal=causal, mask="padding")
    q, k, v, mask = case.make(dtype, requires_grad=True)
    qr, kr, vr, _ = case.make(torch.float64, requires_grad=True)
    ref = _reference(case, qr, kr, vr, mask)
    out = _linear(case, q, k, v, mask)
    assert out.dtype == dtype
    kk, vv = (x.repeat_interleave(2, dim=1) for x in (k, v))
    plain = plain_attention(q, kk, vv, kernel="squared", attn_mask=mask, is_causal=causal)
    assert_close(out, ref.detach(), plain=plain)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, got, pl, want in zip("qkv", torch.autograd.grad(out, (q, k, v), g.to(dtype)),
                                   torch.autograd.grad(plain, (q, k, v), g.to(dtype)),
                                   torch.autograd.grad(ref, (qr, kr, vr), g), strict=True):
        assert_close(got, want, plain=pl, what=f"d{name}")


@pytest.mark.parametrize("case", [Case(B=1, H=2, L=7, S=9, D=4, mask="padding"),
                                  Case(B=1, H=2, Hkv=1, L=9, S=6, D=4, causal=True),
                                  Case(B=1, H=1, L=6, S=9, D=3, causal=True, mask="padding")], ids=lambda c: c.id)
def test_gradcheck(case):
    q, k, v, mask = case.make(torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: _linear(case, q, k, v, mask, chunk_size=4), (q, k, v))


def test_degree2_features_give_the_squared_dot_product():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 5, 9, generator=g, dtype=torch.float64).unbind(0)
    fx, fy = degree2_features(x), degree2_features(y)
    assert fx.shape == (5, 45)
    torch.testing.assert_close((fx * fy).sum(-1), (x * y).sum(-1) ** 2)


def test_padding_mask_with_a_fully_masked_sequence_gives_zeros():
    case = Case(B=2, H=2, L=10, causal=True)
    q, k, v, _ = case.make(requires_grad=True)
    mask = torch.tensor([True, False])[:, None, None, None].expand(2, 1, 1, 10)
    out = _linear(case, q, k, v, mask, chunk_size=3)
    assert (out[1] == 0).all()
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_a_mask_constant_over_queries_is_accepted_even_when_materialized():
    case = Case(L=12)
    q, k, v, _ = case.make()
    row = torch.rand(2, 1, 1, 12, generator=torch.Generator().manual_seed(2)) > 0.4
    out = _linear(case, q, k, v, row.expand(2, 1, 12, 12))
    assert_close(out, _reference(case, q, k, v, row))


def test_rejections():
    case = Case(L=6, mask="random")
    q, k, v, mask = case.make()
    problem, _ = _problem(case, q, k, v, mask)
    with pytest.raises(ValueError, match="attn_mask must be the same for every query with backend 'linear'"):
        linear_attention(problem)
    problem, _ = _problem(case, q, k, v, None)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        linear_attention(problem, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        linear_attention(problem, chunk_size=2.0)
    other, _ = canonicalize(q, k, v, None, False, None, False, 1e-6, attnlab.get_kernel("expressive"))
    with pytest.raises(ValueError, match="backend 'linear' supports only kernel 'squared', got 'expressive'"):
        linear_attention(other)
    with pytest.raises(ValueError, match="backend 'linear' does not support kernel 'expressive'"):
        attnlab.attention(q, k, v, kernel="expressive", backend="linear")


@pytest.mark.parametrize("scale", [None, 0.3])
def test_recurrent_state_equals_causal_attention_token_by_token(scale):
    g = torch.Generator().manual_seed(5)
    N, H, L, D, Dv = 2, 3, 11, 6, 4
    q, k = (torch.randn(N, H, L, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(N, H, L, Dv, generator=g, dtype=torch.float64)
    full = attnlab.attention(q, k, v, kernel="squared", is_causal=True, scale=scale, backend="reference")
    state = SquaredKernelState(N, H, D, Dv, scale=scale, dtype=torch.float64)
    for t in range(L):
        state.update(k[:, :, t], v[:, :, t])
        torch.testing.assert_close(state.query(q[:, :, t]), full[:, :, t])
    assert state.tokens == L and state.state.shape == (N, H, D * (D + 1) // 2, Dv + 1)


def test_recurrent_state_before_any_token_returns_zeros():
    state = SquaredKernelState(1, 2, 4, 3)
    assert (state.query(torch.randn(1, 2, 4)) == 0).all()


def test_recurrent_state_rejections():
    with pytest.raises(ValueError, match="head_dim must be >= 1"):
        SquaredKernelState(1, 1, 0, 2)
    with pytest.raises(TypeError, match="num_heads must be an int"):
        SquaredKernelState(1, 1.5, 2, 2)
    with pytest.raises(TypeError, match=r"dtype must be torch\.float32 or torch\.float64"):
        SquaredKernelState(1, 1, 2, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        SquaredKernelState(1, 1, 2, 2, scale=-1.0)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        SquaredKernelState(1, 1, 2, 2, eps=-1.0)
    state = SquaredKernelState(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"k must have shape \(N, H, 4\) = \(2, 3, 4\)"):
        state.update(torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"v must have shape \(N, H, 5\)"):
        state.update(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match=r"q must be a torch\.Tensor"):
        state.query([1.0])
