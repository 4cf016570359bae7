"""Chunked top-k attention against exact attention and a plain float64 top-k reference."""

from __future__ import annotations

import math

import pytest
import torch

import attnlab
from attnlab.approx.topk import topk_attention
from attnlab.kernels import get_kernel
from cases import CASES, Case

KERNELS = attnlab.available_kernels()[:5]  # the built-ins
TIGHT = {"rtol": 1e-9, "atol": 1e-10}


def _grads(out, inputs, seed=7):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad(out, inputs, upstream)


def plain_topk(q, k, v, mask, causal, kernel, top_k, eps=1e-6):
    """Materialize all scores, keep the top_k visible weights per row, normalize (float64)."""
    kern = get_kernel(kernel)
    groups = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(groups, -3), v.repeat_interleave(groups, -3)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    L, S = s.shape[-2:]
    visible = torch.ones(L, S, dtype=torch.bool)
    if causal:
        visible = visible & torch.ones(L, S).tril().bool()
    if mask is not None:
        visible = visible & mask
    visible = visible.expand(s.shape)
    crit = torch.where(visible, s if kern.exponential else kern.weights(s), -math.inf)
    vals, idx = torch.topk(crit, min(top_k, S), dim=-1)
    kept = torch.zeros_like(visible).scatter(-1, idx, vals > -math.inf)
    if kern.exponential:
        row_max = torch.where(kept, s, -math.inf).amax(-1, keepdim=True).clamp(min=-1e300)
        a = torch.where(kept, torch.exp(s - row_max), 0.0)
        z = a.sum(-1, keepdim=True)
    else:
        a = torch.where(kept, kern.weights(s), 0.0)
        z = a.sum(-1, keepdim=True) + eps
    return (a / torch.where(z > 0, z, 1.0)) @ v


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("kernel", KERNELS)
def test_full_k_equals_exact_attention_with_gradients(kernel, case: Case):
    q, k, v, mask = case.make(requires_grad=True)
    S = k.shape[-2]
    kw = dict(kernel=kernel, attn_mask=mask, is_causal=case.causal, enable_gqa=case.gqa)
    out = topk_attention(q, k, v, top_k=S, chunk_size=7, **kw)
    ref = attnlab.attention(q, k, v, backend="reference", **kw)
    torch.testing.assert_close(out, ref, **TIGHT)
    for got, want in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


@pytest.mark.parametrize("top_k", [1, 3, 8])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "case",
    [Case(mask="random"), Case(H=4, Hkv=2, L=19, S=30, causal=True), Case(L=30, S=11, causal=True)],
    ids=lambda c: c.id,
)
def test_small_k_equals_plain_float64_reference(case: Case, kernel, top_k):
    q, k, v, mask = case.make(requires_grad=True)
    out = topk_attention(q, k, v, top_k=top_k, kernel=kernel, attn_mask=mask,
                         is_causal=case.causal, enable_gqa=case.gqa, chunk_size=5)
    ref = plain_topk(q, k, v, mask, case.causal, kernel, top_k)
    torch.testing.assert_close(out, ref, **TIGHT)
    for got, want in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


@pytest.mark.parametrize("kernel", ["softmax", "expressive", "relu2"])
def test_gradcheck_with_mask(kernel):
    q, k, v, mask = Case(B=1, H=2, L=6, S=9, D=4, mask="random").make(requires_grad=True)
    fn = lambda q, k, v: topk_attention(  # noqa: E731
        q, k, v, top_k=3, kernel=kernel, attn_mask=mask, chunk_size=4
    )
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("kernel", KERNELS)
def test_fully_masked_row_gives_zeros_and_finite_grads(kernel):
    q, k, v, _ = Case(B=1, H=1, L=5, S=6, D=4).make(requires_grad=True)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[2] = False
    out = topk_attention(q, k, v, top_k=2, kernel=kernel, attn_mask=mask)
    assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
    assert out[..., [0, 1, 3, 4], :].abs().sum() > 0
    grads = _grads(out, (q, k, v))
    for grad in grads:
        assert torch.isfinite(grad).all()
    assert torch.equal(grads[0][..., 2, :], torch.zeros(1, 1, 4, dtype=q.dtype))


@pytest.mark.parametrize("kernel", ["softmax", "expressive"])
def test_chunk_sizes_agree(kernel):
    q, k, v, mask = Case(H=4, Hkv=2, L=37, causal=True, mask="random").make(requires_grad=True)
    results = []
    for chunk in (1, 4, 37, 100, None):
        out = topk_attention(q, k, v, top_k=5, kernel=kernel, attn_mask=mask, is_causal=True,
                             enable_gqa=True, chunk_size=chunk)
        results.append((out, *_grads(out, (q, k, v))))
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            torch.testing.assert_close(got, want, **TIGHT)


def test_expressive_selects_by_weight_not_by_score():
    # Scores (D=1, scale=1): key 0 antiparallel (s=-4), key 1 parallel (s=+1), key 2 orthogonal.
    q = torch.tensor([[[1.0]]], dtype=torch.float64)
    k = torch.tensor([[[-4.0], [1.0], [0.0]]], dtype=torch.float64)
    v = torch.tensor([[[10.0], [20.0], [30.0]]], dtype=torch.float64)
    ea = topk_attention(q, k, v, top_k=1, kernel="expressive", eps=0.0)
    softmax = topk_attention(q, k, v, top_k=1, kernel="softmax")
    assert ea.item() == pytest.approx(10.0)  # the heaviest EA weight: s^2/(1+s^2) at s=-4
    assert softmax.item() == pytest.approx(20.0)  # the largest score


@pytest.mark.parametrize("kernel", KERNELS)
def test_masked_key_is_never_selected(kernel):
    q = torch.ones(1, 1, 1, 2, dtype=torch.float64)
    k = torch.tensor([[[[5.0, 5.0], [1.0, 0.5], [0.5, 0.2]]]], dtype=torch.float64)
    v = torch.tensor([[[[100.0], [1.0], [2.0]]]], dtype=torch.float64)
    mask = torch.tensor([False, True, True])
    out = topk_attention(q, k, v, top_k=1, kernel=kernel, attn_mask=mask, eps=0.0)
    assert out.item() == pytest.approx(1.0)


def test_causal_equals_explicit_triangular_mask():
    q, k, v, _ = Case(L=21, S=21).make()
    tri = torch.ones(21, 21).tril().bool()
    a = topk_attention(q, k, v, top_k=4, kernel="relu2", is_causal=True, chunk_size=6)
    b = topk_attention(q, k, v, top_k=4, kernel="relu2", attn_mask=tri, chunk_size=6)
    torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_accumulates_in_float32(dtype, tol):
    q, k, v, mask = Case(mask="random").make(dtype=dtype)
    out = topk_attention(q, k, v, top_k=6, kernel="expressive", attn_mask=mask)
    # the same (rounded) inputs in float64: only the arithmetic differs
    ref = plain_topk(q.double(), k.double(), v.double(), mask, False, "expressive", 6)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_empty_inputs():
    q = torch.randn(1, 2, 0, 4)
    k, v = torch.randn(2, 1, 2, 5, 4).unbind(0)
    assert topk_attention(q, k, v, top_k=2).shape == (1, 2, 0, 4)
    q = torch.randn(1, 2, 3, 4)
    k = v = torch.randn(1, 2, 0, 4)
    assert torch.equal(topk_attention(q, k, v, top_k=2), torch.zeros(1, 2, 3, 4))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_k": 0}, ValueError, "top_k must be >= 1"),
        ({"top_k": 2.5}, TypeError, "top_k must be an int"),
        ({"top_k": True}, TypeError, "top_k must be an int"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
        ({"chunk_size": "8"}, TypeError, "chunk_size must be an int"),
        ({"kernel": "cubic"}, ValueError, "kernel must be one of"),
        ({"attn_mask": torch.ones(4, 4)}, TypeError, "attn_mask must be a bool tensor"),
    ],
)
def test_rejects_bad_input(kwargs, error, match):
    q = k = v = torch.randn(1, 1, 4, 2)
    with pytest.raises(error, match=match):
        topk_attention(q, k, v, **kwargs)


def test_approximate_attention_documents_every_method_its_options_and_the_top_k_default(monkeypatch):
    """Issue 12: help(approximate_attention) listed neither the methods nor their options, and
    method="topk" without top_k silently kept 32 keys."""
    from attnlab.approx import registry

    doc = registry.approximate_attention.__doc__
    for name in registry.available_approximations():
        assert f"``{name}``" in doc
    assert "top_k=32" in doc and "num_landmarks=64" in doc and "budget: ``top_k``" in doc
    assert "default 32" in topk_attention.__doc__
    q, k, v = torch.randn(3, 1, 1, 40, 4, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0)).unbind(0)
    torch.testing.assert_close(registry.approximate_attention(q, k, v, method="topk"),
                               topk_attention(q, k, v, top_k=32))
    # a method registered later appears too: the list is built from the registry
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    monkeypatch.setattr(registry.approximate_attention, "__doc__", doc)
    registry.register_approximation("mine", lambda q, k, v, *, budget=3: v)
    assert "``mine``" in registry.approximate_attention.__doc__
    assert "budget=3" in registry.approximate_attention.__doc__
