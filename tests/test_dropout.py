"""Attention dropout: one counter-based mask for every backend that honours it, checked against
the float64 reference (outputs and gradients under the same seed), statistically, and bit for bit
between the Python hash and its C++ mirror."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import attnlab
from attnlab.backends import _common, available_backends, cpp, get_backend, resolve_backend
from attnlab.backends.chunked import chunked_attention
from attnlab.functional import canonicalize
from attnlab.testing import assert_close
from cases import CASES, Case, backend_kernel_pairs

P = 0.3
#: The backends that honour dropout_p; every other registered one must refuse it by name.
DROPOUT_BACKENDS = ("reference", "chunked", "cpp")
PAIRS = backend_kernel_pairs()


def _cpp_or_skip():
    reason = cpp.build_error()
    if reason is not None:
        pytest.skip(reason)
    return cpp._load()


def _run(case: Case, q, k, v, mask, *, seed: int, **kw):
    torch.manual_seed(seed)
    return attnlab.attention(q, k, v, attn_mask=mask, is_causal=case.causal, enable_gqa=case.gqa, **kw)


@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_dropout_zero_is_bitwise_unchanged_and_draws_nothing(backend, kernel):
    case = Case(H=4, Hkv=2, causal=True)
    q, k, v, mask = case.make(torch.float32)
    if get_backend(backend).refusal(canonicalize(q, k, v, mask, True, None, True, 1e-6,
                                                 attnlab.get_kernel(kernel))[0]) is not None:
        pytest.skip("backend refuses this input")
    plain = _run(case, q, k, v, mask, seed=0, kernel=kernel, backend=backend)
    state = torch.get_rng_state()
    for zero in (0, 0.0, np.float64(0.0)):
        out = _run(case, q, k, v, mask, seed=0, kernel=kernel, backend=backend, dropout_p=zero)
        assert torch.equal(out, plain)
    torch.manual_seed(0)
    attnlab.attention(q, k, v, kernel=kernel, backend=backend, is_causal=True, enable_gqa=True, dropout_p=0.0)
    assert torch.equal(torch.get_rng_state(), state)  # no seed drawn without dropout


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ["chunked", "cpp"])
@pytest.mark.parametrize("kernel", ["softmax", "expressive", "relu2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_backend_matches_float64_reference_under_the_same_seed(backend, kernel, case, dtype):
    if backend == "cpp":
        if kernel == "softmax":
            pytest.skip("cpp computes no softmax")
        _cpp_or_skip()
    q64, k64, v64, mask = case.make(torch.float64, requires_grad=True)
    ref = _run(case, q64, k64, v64, mask, seed=11, kernel=kernel, backend="reference", dropout_p=P)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), g)
    q, k, v, _ = case.make(dtype, requires_grad=True)
    out = _run(case, q, k, v, mask, seed=11, kernel=kernel, backend=backend, dropout_p=P)
    assert_close(out, ref.detach())
    for name, got, want in zip("qkv", torch.autograd.grad(out, (q, k, v), g.to(dtype)), ref_grads, strict=True):
        assert_close(got, want, what=f"d{name}")
    # the mask is in use: without dropout the output differs by far more than the tolerance
    no_dropout = _run(case, q64, k64, v64, mask, seed=11, kernel=kernel, backend="reference")
    if case.L * (case.S or case.L) > 1:
        assert not torch.allclose(no_dropout, ref, atol=1e-3)


@pytest.mark.parametrize("kernel", ["softmax", "expressive"])
def test_the_mask_does_not_depend_on_tiles_or_threads(kernel):
    case = Case(B=2, H=4, Hkv=2, L=70, S=70, causal=True, mask="random")
    q, k, v, mask = case.make(torch.float64)
    torch.manual_seed(5)
    problem, _ = canonicalize(q, k, v, mask, True, None, True, 1e-6, attnlab.get_kernel(kernel), dropout_p=P)
    want = attnlab.backends.reference.reference_attention(problem)[0]
    for tile_elements, block_q in ((1 << 21, None), (300, 7), (1, 1), (5000, 64)):
        assert_close(chunked_attention(problem, tile_elements=tile_elements, block_q=block_q), want)
    if kernel != "softmax":
        _cpp_or_skip()
        before = torch.get_num_threads()
        try:
            for threads, (bq, bk, tiles) in ((1, (128, 512, 4)), (2, (5, 3, 1)), (2, (16, 7, 3))):
                torch.set_num_threads(threads)
                assert_close(cpp.cpp_attention(problem, block_q=bq, block_k=bk, tiles_per_task=tiles), want)
        finally:
            torch.set_num_threads(before)


def test_cpp_hash_equals_the_python_hash_bit_for_bit():
    ext = _cpp_or_skip()
    g = torch.Generator().manual_seed(0)
    rows = torch.cat([torch.arange(64), torch.randint(0, 2**62, (64,), generator=g), torch.tensor([2**32 - 1, 2**32])])
    for seed in (0, 1, 2**32 - 1, 2**32, 0xDEADBEEF12345678, 2**64 - 1):
        want = _common.dropout_bits(seed, rows, torch.arange(300))
        got = ext.dropout_bits(seed & 0xFFFFFFFF, seed >> 32, rows, 300)
        assert torch.equal(got, want), seed


@pytest.mark.parametrize("backend", ["chunked", "cpp"])
def test_the_kept_weights_are_the_python_mask(backend):
    """With v = identity (D_v = S) the output is the dropped weights themselves: its zeros are
    exactly the weights the Python hash drops, row by row (rows flattened as (B, H, L))."""
    if backend == "cpp":
        _cpp_or_skip()
    B, H, L, S = 2, 3, 50, 40
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, H, L, 8, generator=g), torch.randn(B, H, S, 8, generator=g)
    v = torch.eye(S).expand(B, H, S, S)
    torch.manual_seed(9)
    out = attnlab.attention(q, k, v, kernel="expressive", backend=backend, dropout_p=0.5)
    torch.manual_seed(9)
    seed = attnlab.functional.draw_dropout_seed(q.device)
    keep = _common.dropout_keep(seed, 0.5, torch.arange(B * H * L).view(B, H, L), torch.arange(S))
    assert torch.equal(out != 0, keep)
    kept_fraction = keep.double().mean().item()
    assert abs(kept_fraction - 0.5) < 5 * math.sqrt(0.25 / keep.numel())


@pytest.mark.parametrize("backend", DROPOUT_BACKENDS)
def test_mean_over_seeds_converges_to_the_output_without_dropout(backend):
    """o = sum_j p_j m_j v_j with m_j = keep_j / (1 - p) independent Bernoulli: E o = o_ref and
    Var o = p / (1 - p) sum_j p_j^2 v_j^2. The mean of M draws is within 5 standard errors of
    o_ref everywhere, and the sample variance is near the predicted one."""
    kernel = "softmax" if backend == "chunked" else "expressive"
    if backend == "cpp":
        _cpp_or_skip()
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ref, w = attnlab.attention(q, k, v, kernel=kernel, return_weights=True)
    M = 2000
    torch.manual_seed(0)
    draws = torch.stack([attnlab.attention(q, k, v, kernel=kernel, backend=backend, dropout_p=P)
                         for _ in range(M)])
    var = P / (1 - P) * (w[..., None] ** 2 * v[..., None, :, :] ** 2).sum(-2)
    z = (draws.mean(0) - ref) / (var / M).sqrt()
    assert z.abs().max() < 5
    # The sample variance has relative sd sqrt((kurtosis - 1) / M) <= sqrt(2 / M): each term
    # p_j m_j v_j is a scaled Bernoulli(1 - p), whose excess kurtosis (1 - 6 p (1 - p)) / (p (1 - p))
    # is < 0 at p = 0.3, and so is that of their sum (platykurtic, unlike a Gaussian's 0).
    ratio = draws.var(0) / var
    assert (ratio - 1).abs().max() < 5 * math.sqrt(2 / M)


def test_reproducible_under_manual_seed_and_different_across_calls():
    q, k, v, _ = Case().make(torch.float64)
    torch.manual_seed(4)
    a1, a2 = (attnlab.attention(q, k, v, kernel="expressive", dropout_p=P) for _ in range(2))
    torch.manual_seed(4)
    b1 = attnlab.attention(q, k, v, kernel="expressive", dropout_p=P)
    assert torch.equal(a1, b1)
    assert not torch.equal(a1, a2)


def test_return_weights_are_the_weights_before_dropout():
    q, k, v, mask = Case(mask="random").make(torch.float64)
    torch.manual_seed(2)
    out, w = attnlab.attention(q, k, v, kernel="expressive", attn_mask=mask, return_weights=True, dropout_p=P)
    plain_out, plain_w = attnlab.attention(q, k, v, kernel="expressive", attn_mask=mask, return_weights=True)
    assert torch.equal(w, plain_w)
    torch.manual_seed(2)
    assert torch.equal(out, attnlab.attention(q, k, v, kernel="expressive", attn_mask=mask, dropout_p=P,
                                              backend="reference"))
    assert not torch.allclose(out, plain_out)


# "name", not "backend": tests/conftest.py routes backend=triton out of this file, but the
# refusal comes before any kernel runs.
@pytest.mark.parametrize("name", [b for b in available_backends() if b not in DROPOUT_BACKENDS])
def test_backends_without_dropout_refuse_it_by_name(name):
    backend = name
    kernel = next(k for b, k in PAIRS if b == backend)
    q = torch.randn(1, 2, 6, 16)
    with pytest.raises(ValueError, match=re.escape(f"backend {backend!r} does not support dropout_p > 0")):
        attnlab.attention(q, q, q, kernel=kernel, backend=backend, dropout_p=0.1)


@pytest.mark.parametrize("kernel", attnlab.available_kernels())
def test_auto_picks_a_backend_that_honours_dropout(kernel):
    q = torch.randn(1, 2, 6, 8)
    problem, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, attnlab.get_kernel(kernel), dropout_p=0.1)
    chosen = resolve_backend(problem.kernel, problem=problem)
    assert chosen.name in DROPOUT_BACKENDS and chosen.refusal(problem) is None
    if kernel == "softmax":
        assert chosen.name == "chunked"
        without, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, problem.kernel)
        assert resolve_backend(problem.kernel, problem=without).name == "sdpa"


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (1.0, ValueError, r"dropout_p must be in \[0, 1\), got 1.0"),
        (-0.1, ValueError, r"dropout_p must be in \[0, 1\), got -0.1"),
        (float("nan"), ValueError, r"dropout_p must be in \[0, 1\), got nan"),
        (True, TypeError, r"dropout_p must be a real number in \[0, 1\), got bool"),
        (np.bool_(False), TypeError, r"dropout_p must be a real number in \[0, 1\), got numpy\.bool"),
        ("0.1", TypeError, r"dropout_p must be a real number in \[0, 1\), got str"),
        (torch.tensor(0.1), TypeError, r"dropout_p must be a real number in \[0, 1\), got torch\.Tensor"),
    ],
)
def test_bad_dropout_is_rejected(value, error, match):
    q = torch.randn(1, 2, 6, 8)
    with pytest.raises(error, match=match):
        attnlab.attention(q, q, q, dropout_p=value)


def test_numpy_floats_are_accepted():
    q = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    for value in (np.float32(0.25), np.float64(0.25)):
        torch.manual_seed(0)
        a = attnlab.attention(q, q, q, kernel="relu", dropout_p=value)
        torch.manual_seed(0)
        assert torch.equal(a, attnlab.attention(q, q, q, kernel="relu", dropout_p=0.25))


def test_multihead_attention_drops_only_in_training():
    from attnlab.nn import MultiheadAttention

    mha = MultiheadAttention(16, 4, dropout=0.4, kernel="expressive", batch_first=True)
    x = torch.randn(2, 7, 16)
    mha.eval()
    plain, _ = mha(x, x, x, need_weights=False)
    torch.manual_seed(1)
    assert torch.equal(mha(x, x, x, need_weights=False)[0], plain)
    mha.train()
    torch.manual_seed(1)
    dropped, weights = mha(x, x, x)  # need_weights: the reference, weights before dropout
    torch.manual_seed(1)
    fast, _ = mha(x, x, x, need_weights=False)  # the same mask on the fast path
    assert_close(fast.detach(), dropped.detach().double())
    assert not torch.allclose(dropped, plain)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 7), atol=1e-4)  # 1 - O(eps): EA's normalizer


def test_model_config_attention_dropout_in_training_only():
    from attnlab.models import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=50, context=16, n_layers=1, d_model=32, n_heads=4, kernel="expressive",
                      attn_dropout=0.5)
    model = build_model(cfg)
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    model.eval()
    a, b = model(idx), model(idx)
    assert torch.equal(a if isinstance(a, torch.Tensor) else a[0], b if isinstance(b, torch.Tensor) else b[0])
    model.train()
    c, d = model(idx), model(idx)
    c, d = (t if isinstance(t, torch.Tensor) else t[0] for t in (c, d))
    assert not torch.allclose(c, d)
    with pytest.raises(ValueError, match=re.escape("attn_dropout must be in [0, 1), got 1.0")):
        ModelConfig(attn_dropout=1.0)
