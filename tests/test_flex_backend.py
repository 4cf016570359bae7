"""The ``flex`` backend (torch FlexAttention with score_mod = log f(s)) against the reference.

On CPU torch's FlexAttention runs the forward only (an unfused fallback, no backward), so the
backend is registered only where CUDA is available; these tests call it directly: forwards on
CPU under ``torch.no_grad()``, gradients only on CUDA (skipped here with the reason).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import attnlab
from attnlab.backends.flex import flex_attention_backend, flex_unavailable_reason
from attnlab.functional import canonicalize
from attnlab.testing import assert_close
from cases import Case

pytestmark = [
    pytest.mark.skipif(flex_unavailable_reason("cpu", needs_grad=False) is not None,
                       reason=str(flex_unavailable_reason("cpu", needs_grad=False))),
    # torch warns once that uncompiled flex_attention materializes the scores (expected on CPU).
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]
CUDA = torch.cuda.is_available()
# Few shapes: every new shape costs FlexAttention a trace (~0.5 s on CPU).
CASES = [
    Case(mask="random", H=4, Hkv=2),
    Case(causal=True, mask="empty-rows"),
    Case(L=17, S=40, Dv=8, causal=True, mask="padding"),
]


def _flex(case: Case, q, k, v, mask, kernel: str, eps: float = 1e-6):
    problem, shape = canonicalize(q, k, v, mask, case.causal, None, case.gqa, eps, attnlab.get_kernel(kernel))
    return flex_attention_backend(problem).reshape(shape)


def _reference(case: Case, q, k, v, mask, kernel: str, eps: float = 1e-6):
    return attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, is_causal=case.causal,
                             enable_gqa=case.gqa, eps=eps, backend="reference")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("kernel", attnlab.available_kernels())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_forward_matches_float64_reference(case, kernel, dtype):
    q, k, v, mask = case.make(dtype)
    ref = _reference(case, *case.make(torch.float64)[:3], mask, kernel)
    with torch.no_grad():
        out = _flex(case, q, k, v, mask, kernel)
    assert out.dtype == dtype
    assert_close(out, ref)
    if mask is not None and case.mask == "empty-rows":
        assert (out[~mask.any(-1).expand(out.shape[:-1])] == 0).all()


@pytest.mark.parametrize("poison", ["nan", "inf", "huge"])
@pytest.mark.parametrize("kernel", ["softmax", "expressive", "squared"])
def test_masked_keys_are_inert(kernel, poison):
    """The masked-key rule of tests/test_edge_cases.py (flex is in the registry only with CUDA):
    padding keys holding non-finite keys and values, and a non-finite key hidden from some
    queries only; forwards on CPU (gradients on CUDA)."""
    from test_edge_cases import check_blind_queries, check_padding_keys_inert

    def run(q, k, v, mask, causal):
        problem, shape = canonicalize(q, k, v, mask, causal, None, q.shape[1] != k.shape[1], 1e-6,
                                      attnlab.get_kernel(kernel))
        with torch.no_grad() if not CUDA else torch.enable_grad():
            return flex_attention_backend(problem).reshape(shape)

    device = "cuda" if CUDA else "cpu"
    dtype = torch.float32 if CUDA or poison == "huge" else torch.float64
    for causal in (False, True):
        check_padding_keys_inert("flex", kernel, causal, poison, dtype=dtype, device=device, grads=CUDA, run=run)
    if poison != "huge":
        for hiding in ("causal", "mask"):
            check_blind_queries("flex", kernel, hiding, poison, dtype=dtype, device=device, run=run)

@pytest.mark.parametrize("kernel", ["squared", "relu"])
def test_all_zero_weights_give_zero_rows_without_nan(kernel):
    """q = 0 (squared) or q.k < 0 everywhere (relu): every f(s) is 0, log f = -inf."""
    g = torch.Generator().manual_seed(0)
    case = Case(B=1, H=2, L=4, S=6, D=8)
    k = torch.randn(1, 2, 6, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 6, 3, generator=g, dtype=torch.float64)
    q = torch.zeros(1, 2, 4, 8, dtype=torch.float64) if kernel == "squared" else -k[:, :, :1].expand(1, 2, 4, 8)
    if kernel == "relu":
        k = k[:, :, :1].expand(1, 2, 6, 8)
    with torch.no_grad():
        out = _flex(case, q, k, v, None, kernel)
    assert_close(out, _reference(case, q, k, v, None, kernel))
    assert out.abs().max() < 1e-20


@pytest.mark.parametrize("eps", [0.0, 1.0])
def test_eps_enters_the_normalizer(eps):
    case = Case(B=1, H=2, L=9, D=4, causal=True)
    q, k, v, _ = case.make()
    with torch.no_grad():
        out = _flex(case, q, k, v, None, "expressive", eps=eps)
    assert_close(out, _reference(case, q, k, v, None, "expressive", eps=eps))


def test_low_precision_forward_is_close():
    case = Case(causal=True, mask="random")
    q, k, v, mask = case.make(torch.bfloat16)
    ref = _reference(case, *case.make(torch.float64)[:3], mask, "expressive")
    with torch.no_grad():
        out = _flex(case, q, k, v, mask, "expressive")
    assert out.dtype == torch.bfloat16
    # bf16 rounding of the output alone is 2^-8 relative; the scores are computed in fp32.
    assert (out.double() - ref).abs().max() < 2e-2


def test_empty_inputs():
    q = torch.randn(1, 2, 3, 4)
    with torch.no_grad():
        out = _flex(Case(), q, torch.randn(1, 2, 0, 4), torch.randn(1, 2, 0, 5), None, "expressive")
        empty = _flex(Case(), torch.randn(1, 2, 0, 4), q, q, None, "expressive")
    assert out.shape == (1, 2, 3, 5) and (out == 0).all()
    assert empty.shape == (1, 2, 0, 4)


@pytest.mark.skipif(CUDA, reason="checks the CPU refusal")
def test_cpu_gradients_are_refused_with_the_reason():
    assert flex_unavailable_reason("cpu", needs_grad=True) is not None
    assert "flex" not in attnlab.backends.available_backends()
    q, k, v, _ = Case(L=5).make(requires_grad=True)
    with pytest.raises(ValueError, match="backend 'flex' cannot compute gradients on cpu"):
        _flex(Case(L=5), q, k, v, None, "expressive")
    problem, _ = canonicalize(q, k, v, None, False, None, False, 1e-6, attnlab.get_kernel("expressive"))
    with torch.no_grad(), pytest.raises(ValueError, match="compile=True needs a cuda device"):
        flex_attention_backend(problem, compile=True)


def test_unavailable_device_reason():
    assert "runs on cuda or cpu" in flex_unavailable_reason("meta", needs_grad=False)


@pytest.mark.skipif(not CUDA, reason="FlexAttention has no CPU backward; gradients run on CUDA only (untested here)")
@pytest.mark.parametrize("kernel", ["expressive", "squared", "softmax"])
def test_cuda_gradients_match_float64_reference(kernel):
    case = Case(causal=True, mask="empty-rows")
    q, k, v, mask = (t.cuda() if t is not None else None for t in case.make(torch.float32, requires_grad=False))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _reference(case, qr, kr, vr, mask, kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _flex(case, q, k, v, mask, kernel)
    assert_close(out, ref.detach())
    g = torch.randn_like(ref)
    for name, got, want in zip("qkv", torch.autograd.grad(out, (q, k, v), g.float()),
                               torch.autograd.grad(ref, (qr, kr, vr), g), strict=True):
        assert_close(got, want, what=f"d{name}")
