"""Feature-map and low-rank approximations (performer, elu-linear, cosformer, nystrom), registry."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab.approx import registry
from attnlab.approx.features import (
    cosformer_attention,
    elu_linear_attention,
    feature_attention,
    linear_attention,
    orthogonal_random_features,
    performer_attention,
)
from attnlab.approx.lowrank import iterative_pinv, nystrom_attention, segment_means
from attnlab.approx.registry import (
    approximate_attention,
    available_approximations,
    get_approximation,
    register_approximation,
)
from attnlab.approx.topk import topk_attention
from cases import Case

TIGHT = {"rtol": 1e-9, "atol": 1e-10}
FEATURE_CASES = [
    Case(),
    Case(causal=True),
    Case(H=4, Hkv=2, L=19, S=70, causal=True, mask="padding"),
    Case(L=70, S=19, causal=True),
    Case(L=130, causal=True, mask="padding"),
    Case(B=1, H=1, L=1, S=1),
]


def _grads(out, inputs):
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, upstream)


def materialized(phi_q, phi_k, v, causal, mask, eps=1e-6):
    """o_i = sum_j w_ij v_j / (sum_j w_ij + eps), w = phi_q phi_k^T, zeroed where not visible."""
    w = phi_q @ phi_k.transpose(-1, -2)
    L, S = w.shape[-2:]
    if causal:
        w = w * torch.ones(L, S).tril()
    if mask is not None:
        w = w * mask
    z = w.sum(-1, keepdim=True) + eps
    return (w @ v) / torch.where(z > 0, z, 1.0)


def _repeat(case, k, v):
    g = case.H // (case.Hkv or case.H)
    return k.repeat_interleave(g, -3), v.repeat_interleave(g, -3)


def _cos_features(x, M):
    t = torch.arange(x.shape[-2], dtype=x.dtype)[:, None] * math.pi / (2 * M)
    return torch.cat([x.relu() * t.cos(), x.relu() * t.sin()], -1)


@pytest.mark.parametrize("case", FEATURE_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("method", ["elu-linear", "cosformer"])
def test_linear_and_cosformer_equal_materialized_reference(method, case: Case):
    q, k, v, mask = case.make(requires_grad=True)
    kr, vr = _repeat(case, k, v)
    if method == "elu-linear":
        phi_q, phi_k = F.elu(q) + 1, F.elu(kr) + 1
        fn = elu_linear_attention
    else:
        M = max(q.shape[-2], k.shape[-2])
        phi_q, phi_k = _cos_features(q, M), _cos_features(kr, M)
        fn = cosformer_attention
    ref = materialized(phi_q, phi_k, vr, case.causal, mask)
    out = fn(q, k, v, attn_mask=mask, is_causal=case.causal, enable_gqa=case.gqa, chunk_size=16)
    torch.testing.assert_close(out, ref, **TIGHT)
    for got, want in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


def test_cosformer_weights_decay_with_distance():
    # identical positive q, k: the weight of key j for query i is cos(pi (i - j) / (2M))
    x = torch.ones(1, 1, 8, 2, dtype=torch.float64)
    v = torch.eye(8, dtype=torch.float64)[None, None]
    w = cosformer_attention(x, x, v, eps=0.0)[0, 0]
    dist = torch.arange(8)[:, None] - torch.arange(8)[None, :]
    want = torch.cos(math.pi * dist.double() / 16)
    torch.testing.assert_close(w, want / want.sum(-1, keepdim=True), **TIGHT)


@pytest.mark.parametrize("chunk", [1, 5, 64, 500])
def test_causal_chunk_sizes_agree(chunk):
    g = torch.Generator().manual_seed(0)
    phi_q, phi_k = torch.rand(2, 3, 37, 6, generator=g), torch.rand(2, 3, 29, 6, generator=g)
    v = torch.randn(2, 3, 29, 4, generator=g)
    out = feature_attention(phi_q.double(), phi_k.double(), v.double(), is_causal=True,
                            chunk_size=chunk)
    ref = materialized(phi_q.double(), phi_k.double(), v.double(), True, None)
    torch.testing.assert_close(out, ref, **TIGHT)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_feature_engine_gradcheck_with_broadcast_leading_dims(causal):
    """The shared chunked engine (custom backward, recomputed per chunk) under gradcheck, with
    query features shared by a batch of keys (leading dims that broadcast) and odd chunks."""
    g = torch.Generator().manual_seed(3)
    phi_q = torch.rand(7, 3, generator=g, dtype=torch.float64).requires_grad_()
    phi_k = torch.rand(2, 6, 3, generator=g, dtype=torch.float64).requires_grad_()
    v = torch.randn(1, 6, 2, generator=g, dtype=torch.float64).requires_grad_()
    fn = lambda a, b, c: feature_attention(a, b, c, is_causal=causal, chunk_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (phi_q, phi_k, v))
    want = materialized(phi_q.detach().expand(2, 7, 3), phi_k.detach(), v.detach().expand(2, 6, 2), causal, None)
    torch.testing.assert_close(fn(phi_q, phi_k, v).detach(), want, **TIGHT)


def test_orthogonal_random_features_are_orthogonal_blocks_and_seeded():
    w = orthogonal_random_features(20, 8, generator=torch.Generator().manual_seed(5))
    assert w.shape == (20, 8)
    for block in (w[:8], w[8:16], w[16:]):
        gram = block @ block.T
        torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-10, rtol=0)
    again = orthogonal_random_features(20, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(w, again)


def _rel_error(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_decreases_with_more_features(causal):
    q, k, v, _ = Case(H=4, Hkv=2, L=40, D=8).make()
    q, k = q / 3, k / 3  # scores of order 0.5: the regime where FAVOR+ variance is moderate
    kr, vr = _repeat(Case(H=4, Hkv=2), k, v)
    exact = attnlab.attention(q, kr, vr, is_causal=causal)
    errors = [
        sum(_rel_error(performer_attention(q, k, v, is_causal=causal, enable_gqa=True,
                                           num_features=m, seed=s), exact) for s in range(4)) / 4
        for m in (8, 64, 512, 4096)
    ]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.05, errors


def test_performer_causal_equals_materialized_random_features():
    q, k, v, mask = Case(L=45, D=8, mask="padding").make(requires_grad=True)
    out = performer_attention(q, k, v, is_causal=True, attn_mask=mask, num_features=16, seed=3,
                              chunk_size=8)
    w = orthogonal_random_features(16, 8, generator=torch.Generator().manual_seed(3))
    r = 8 ** -0.25
    phi_q, phi_k = (torch.exp((x * r) @ w.T - (x * r).square().sum(-1, keepdim=True) / 2)
                    for x in (q, k))
    # eps scales with the stabilizing constants, so compare with eps = 0 on both sides
    ref = materialized(phi_q, phi_k, v, True, mask, eps=0.0)
    out = performer_attention(q, k, v, is_causal=True, attn_mask=mask, num_features=16, seed=3,
                              chunk_size=8, eps=0.0)
    torch.testing.assert_close(out, ref, **TIGHT)
    for got, want in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


def test_performer_is_seeded():
    q, k, v, _ = Case(L=12, D=8).make()
    a = performer_attention(q, k, v, seed=1)
    assert torch.equal(a, performer_attention(q, k, v, seed=1))
    assert not torch.equal(a, performer_attention(q, k, v, seed=2))
    b = performer_attention(q, k, v, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(performer_attention(q, k, v), performer_attention(q, k, v, seed=0))


def test_segment_means_of_uneven_segments():
    x = torch.arange(7, dtype=torch.float64)[:, None]
    torch.testing.assert_close(segment_means(x, 3), torch.tensor([[0.5], [2.5], [5.0]], dtype=torch.float64))


def test_nystrom_is_exact_with_one_token_per_landmark():
    case = Case(H=4, Hkv=2, L=24, D=8)
    q, k, v, _ = case.make(requires_grad=True)
    kr, vr = _repeat(case, k, v)
    out = nystrom_attention(q, k, v, num_landmarks=24, enable_gqa=True, pinv_iterations=None)
    ref = attnlab.attention(q, kr, vr)
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-8)


def test_nystrom_error_decreases_with_more_landmarks():
    q, k, v, _ = Case(B=2, H=4, L=48, D=8).make()
    q, k = q / 1.5, k / 1.5  # standard normal entries, scores of order 1
    exact = attnlab.attention(q, k, v)
    errors = [_rel_error(nystrom_attention(q, k, v, num_landmarks=m), exact) for m in (2, 8, 24)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors


def test_iterative_pinv_converges_on_a_well_conditioned_matrix():
    a = torch.eye(5, dtype=torch.float64) + 0.1 * torch.rand(5, 5, generator=torch.Generator())
    torch.testing.assert_close(iterative_pinv(a, 20), torch.linalg.inv(a), **TIGHT)


def test_nystrom_gradcheck():
    q, k, v, _ = Case(B=1, H=1, L=6, D=3).make(requires_grad=True)
    assert torch.autograd.gradcheck(lambda *x: nystrom_attention(*x, num_landmarks=3), (q, k, v))


def test_registry_dispatches_by_name():
    assert set(available_approximations()) >= {"topk", "performer", "elu-linear", "cosformer",
                                                "nystrom"}
    q, k, v, mask = Case(causal=True, mask="padding").make()
    got = approximate_attention(q, k, v, method="topk", top_k=3, attn_mask=mask, is_causal=True)
    torch.testing.assert_close(got, topk_attention(q, k, v, top_k=3, attn_mask=mask,
                                                   is_causal=True), **TIGHT)
    assert get_approximation("elu-linear") is elu_linear_attention
    assert get_approximation("linear") is linear_attention  # the deprecated alias


def test_linear_is_a_deprecated_alias_of_elu_linear():
    q, k, v, mask = Case(causal=True, mask="padding").make()
    want = elu_linear_attention(q, k, v, attn_mask=mask, is_causal=True)
    with pytest.warns(DeprecationWarning, match="'elu-linear'") as record:
        got = approximate_attention(q, k, v, method="linear", attn_mask=mask, is_causal=True)
    assert record[0].filename == __file__  # points at the caller, past attnlab's frames
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="elu_linear_attention"):
        torch.testing.assert_close(linear_attention(q, k, v, attn_mask=mask, is_causal=True), want, rtol=0, atol=0)
    with pytest.raises(TypeError, match="option 'top_k' is not accepted by method 'linear'"):
        approximate_attention(q, k, v, method="linear", top_k=3)


def test_register_approximation(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    fn = lambda q, k, v, *, attn_mask=None: v  # noqa: E731
    register_approximation("identity", fn)
    q = torch.randn(1, 1, 3, 2)
    assert approximate_attention(q, q, q, method="identity") is q
    with pytest.raises(ValueError, match="already registered"):
        register_approximation("identity", fn)
    with pytest.raises(TypeError, match="fn must be callable"):
        register_approximation("x", 3)
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        register_approximation("", fn)


def _kwargs_error_cases():
    pad = torch.ones(8, dtype=torch.bool)
    full = torch.ones(8, 8, dtype=torch.bool)
    return [
        ("nystrom", {"is_causal": True}, ValueError, "is_causal: method 'nystrom'"),
        ("nystrom", {"attn_mask": pad}, ValueError, "attn_mask: method 'nystrom'"),
        ("nystrom", {"kernel": "expressive"}, ValueError, "kernel: method 'nystrom'"),
        ("nystrom", {"num_landmarks": 9}, ValueError, r"num_landmarks must be in 1..min"),
        ("nystrom", {"num_landmarks": 0}, ValueError, r"num_landmarks must be in 1..min"),
        ("nystrom", {"num_landmarks": 2.0}, TypeError, "num_landmarks must be an int"),
        ("nystrom", {"pinv_iterations": 0}, ValueError, "pinv_iterations must be >= 1"),
        ("nystrom", {"pinv_iterations": "6"}, TypeError, "pinv_iterations must be an int"),
        ("performer", {"kernel": "expressive"}, ValueError, "kernel: method 'performer'"),
        ("performer", {"attn_mask": full}, ValueError, "attn_mask: method 'performer'"),
        ("performer", {"seed": 1, "generator": torch.Generator()}, ValueError, "seed and generator"),
        ("performer", {"seed": 1.5}, TypeError, "seed must be an int"),
        ("performer", {"generator": 3}, TypeError, "generator must be a torch.Generator"),
        ("performer", {"num_features": 0}, ValueError, "num_features must be >= 1"),
        ("performer", {"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
        ("elu-linear", {"scale": 0.5}, ValueError, "scale: method 'elu-linear'"),
        ("elu-linear", {"attn_mask": full}, ValueError, "attn_mask: method 'elu-linear'"),
        ("elu-linear", {"chunk_size": 1.0}, TypeError, "chunk_size must be an int"),
        ("cosformer", {"scale": 0.5}, ValueError, "scale: method 'cosformer'"),
        ("cosformer", {"attn_mask": full}, ValueError, "attn_mask: method 'cosformer'"),
        ("topk", {"top_k": 0}, ValueError, "top_k must be >= 1"),
        ("elu-linear", {"top_k": 3}, TypeError, "option 'top_k' is not accepted by method 'elu-linear'"),
        ("nystrom", {"eps": 0.1}, TypeError, "option 'eps' is not accepted by method 'nystrom'"),
        ("fourier", {}, ValueError, r"method must be one of \['topk'"),
        (3, {}, TypeError, "method must be a str"),
    ]


@pytest.mark.parametrize(("method", "kwargs", "error", "match"), _kwargs_error_cases())
def test_rejects_bad_input(method, kwargs, error, match):
    q = k = v = torch.randn(1, 2, 8, 4)
    with pytest.raises(error, match=match):
        approximate_attention(q, k, v, method=method, **kwargs)


def test_feature_attention_rejects_mismatched_shapes():
    phi = torch.rand(1, 4, 3)
    with pytest.raises(ValueError, match="do not fit"):
        feature_attention(phi, torch.rand(1, 4, 2), torch.rand(1, 4, 5))
    with pytest.raises(ValueError, match="do not fit"):
        feature_attention(phi, phi, torch.rand(1, 5, 5))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        feature_attention(phi, phi, phi, is_causal=True, chunk_size=0)
