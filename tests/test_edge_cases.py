"""Edge cases and invariances that hold for every kernel and backend.

Each backend runs them in float64 where its record takes it (else its widest dtype: ``triton``,
float32) on a device its record lists (:func:`cases.sweep_dtype`, :func:`cases.sweep_device`);
an input it refuses must raise the record's reason (:func:`cases.refused`)."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.backends import get_backend
from attnlab.functional import canonicalize
from attnlab.testing import assert_close
from cases import Case, backend_kernel_pairs, refused, sweep_device, sweep_dtype

KERNELS = attnlab.available_kernels()
PAIRS = backend_kernel_pairs()


@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_fully_masked_rows_give_zero_output_and_finite_grads(backend, kernel):
    dt, dev = sweep_dtype(backend), sweep_device(backend)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=dt, device=dev, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 3, 5, 5, dtype=torch.bool, device=dev)
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    if refused(backend, kernel, q, k, v, mask):
        return
    out = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, backend=backend)
    assert (out[0, 1, 2] == 0).all() and (out[1, :, 4] == 0).all()
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0, 1, 2] == 0).all()


@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_all_zero_scores(backend, kernel):
    """q = 0: softmax averages the values uniformly; a kernel with f(0) = 0 returns zeros."""
    dt, dev = sweep_dtype(backend), sweep_device(backend)
    q = torch.zeros(1, 2, 4, 8, dtype=dt, device=dev, requires_grad=True)
    k = torch.randn(1, 2, 6, 8, dtype=dt, device=dev, requires_grad=True)
    v = torch.randn(1, 2, 6, 3, dtype=dt, device=dev, requires_grad=True)
    out = attnlab.attention(q, k, v, kernel=kernel, backend=backend)
    f0 = float(attnlab.get_kernel(kernel).weights(torch.zeros(1, dtype=torch.float64)))
    kern = attnlab.get_kernel(kernel)
    expected = v.mean(-2, keepdim=True).expand_as(out) if kern.exponential else (
        v.sum(-2, keepdim=True) * f0 / (6 * f0 + 1e-6)).expand_as(out)
    assert_close(out.detach(), expected.detach())
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_expressive_huge_scores_in_fp16_do_not_overflow(backend):
    """|q.k| ~ 1e4 would make s^2 overflow fp16 (max 65504); attnlab squares in fp32."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 2, 9, 16, generator=g) * 40).half().requires_grad_()
    k = (torch.randn(1, 2, 9, 16, generator=g) * 40).half().requires_grad_()
    v = torch.randn(1, 2, 9, 16, generator=g).half().requires_grad_()
    out = attnlab.expressive_attention(q, k, v, backend=backend)
    ref = attnlab.expressive_attention(q.double(), k.double(), v.double(), backend="reference")
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() < 1e-2
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
@pytest.mark.parametrize("shape", [(0, 2, 5, 4), (2, 2, 0, 4)], ids=["empty-batch", "no-queries"])
def test_empty_inputs(backend, kernel, shape):
    dt, dev = sweep_dtype(backend, torch.float32), sweep_device(backend)
    q = torch.randn(shape, dtype=dt, device=dev, requires_grad=True)
    k = torch.randn(shape[0], 2, 5, 4, dtype=dt, device=dev)
    v = torch.randn(shape[0], 2, 5, 3, dtype=dt, device=dev)
    out = attnlab.attention(q, k, v, kernel=kernel, backend=backend)
    assert out.shape == (*shape[:-1], 3)


@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_no_keys_gives_zeros(backend, kernel):
    dt, dev = sweep_dtype(backend, torch.float32), sweep_device(backend)
    q = torch.randn(1, 2, 3, 4, dtype=dt, device=dev, requires_grad=True)
    k, v = torch.randn(1, 2, 0, 4, dtype=dt, device=dev), torch.randn(1, 2, 0, 5, dtype=dt, device=dev)
    out = attnlab.attention(q, k, v, kernel=kernel, backend=backend)
    assert out.shape == (1, 2, 3, 5) and (out == 0).all()


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_expressive_is_invariant_under_query_sign(backend):
    q, k, v, mask = Case(causal=True, mask="random").make()
    a = attnlab.expressive_attention(q, k, v, attn_mask=mask, backend=backend)
    b = attnlab.expressive_attention(-q, k, v, attn_mask=mask, backend=backend)
    assert_close(a, b)


@pytest.mark.parametrize("kernel", KERNELS)
def test_weights_sum_to_one_where_a_key_is_visible(kernel):
    q, k, v, mask = Case(mask="empty-rows").make()
    _, w = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, return_weights=True)
    sums = w.sum(-1)
    has_key = mask.any(-1)
    # The eps in the normalizer moves a sum by eps / sum(a), under 1e-4 for these scores.
    assert torch.allclose(sums[has_key], torch.ones_like(sums[has_key]), atol=1e-4)
    assert (sums[~has_key] == 0).all()
    assert (w[~mask.expand_as(w)] == 0).all()


@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_causal_equals_explicit_triangular_mask(backend, kernel):
    q, k, v, _ = Case(L=19, S=23).make(sweep_dtype(backend), device=sweep_device(backend))
    tri = torch.ones(19, 23, dtype=torch.bool, device=q.device).tril()
    if refused(backend, kernel, q, k, v, tri):
        return
    a = attnlab.attention(q, k, v, kernel=kernel, is_causal=True, backend=backend)
    b = attnlab.attention(q, k, v, kernel=kernel, attn_mask=tri, backend=backend)
    assert_close(a, b)


@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_gqa_equals_repeated_key_value_heads(backend, kernel):
    q, k, v, mask = Case(H=6, Hkv=2, mask="random", causal=True).make(sweep_dtype(backend),
                                                                       device=sweep_device(backend))
    if refused(backend, kernel, q, k, v, mask, causal=True, gqa=True):
        return
    a = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, is_causal=True, enable_gqa=True,
                          backend=backend)
    kr, vr = (x.repeat_interleave(3, dim=1) for x in (k, v))
    b = attnlab.attention(q, kr, vr, kernel=kernel, attn_mask=mask, is_causal=True, backend=backend)
    assert_close(a, b)


@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_padded_batch_equals_per_sequence(backend, kernel):
    g = torch.Generator().manual_seed(3)
    lengths = [5, 9, 2]
    dt, dev = sweep_dtype(backend), sweep_device(backend)
    q, k, v = (torch.randn(3, 2, 9, 8, generator=g, dtype=torch.float64).to(dev, dt) for _ in range(3))
    pad = (torch.arange(9)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :].to(dev)
    out = attnlab.attention(q, k, v, kernel=kernel, attn_mask=pad, is_causal=True, backend=backend)
    for b, n in enumerate(lengths):
        alone = attnlab.attention(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                  kernel=kernel, is_causal=True, backend=backend)
        assert_close(out[b:b + 1, :, :n], alone)


def test_leading_batch_dims_and_2d_inputs():
    q, k, v = (torch.randn(2, 3, 4, 5, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(3, 1, 5, 5) > 0.2
    for backend, kernel in PAIRS:
        if get_backend(backend).refusal(canonicalize(q, k, v, mask, False, None, False, 1e-6,
                                                   attnlab.get_kernel(kernel))[0]):
            continue
        out = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, backend=backend)
        flat = attnlab.attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), kernel=kernel,
                                 attn_mask=mask.repeat(2, 1, 1, 1), backend=backend)
        assert_close(out.flatten(0, 1), flat)
    out2d = attnlab.attention(q[0, 0, 0], k[0, 0, 0], v[0, 0, 0], kernel="expressive")
    assert out2d.shape == (5, 8)
    assert_close(out2d, attnlab.attention(q[0, 0, :1], k[0, 0, :1], v[0, 0, :1], kernel="expressive")[0])


def test_auto_resolution():
    from attnlab.backends import resolve_backend
    assert resolve_backend(attnlab.get_kernel("softmax")).name == "sdpa"
    for kernel in ["expressive", "squared", "relu", "relu2"]:
        assert resolve_backend(attnlab.get_kernel(kernel)).name == "chunked"
    assert resolve_backend(attnlab.get_kernel("expressive"), return_weights=True).name == "reference"


# --- masked keys are inert (the rule in backends/reference.py) ------------------------------
# The checks take a backend, dtype and device (default: what the backend's record takes) so that
# tests/test_flex_backend.py can run them through its own function too.

#: What a masked key may hold. "huge" is finite (float32), but its weight overflows for squared
#: and relu2 (s^2 > 3.4e38), and 0 * inf = NaN where a backend multiplies by the mask.
POISONS = {"nan": float("nan"), "inf": float("inf"), "huge": 1e20}


def _poison(x: torch.Tensor, where: torch.Tensor, value: float) -> torch.Tensor:
    """``x`` with ``value`` (alternating in sign along the last dim) in the rows ``where`` selects."""
    sign = torch.where(torch.arange(x.shape[-1]) % 2 == 0, 1.0, -1.0).to(x.dtype)
    return torch.where(where[..., None], value * sign, x)


def check_padding_keys_inert(backend: str, kernel: str, causal: bool, poison: str, *,
                             dtype: torch.dtype | None = None, device: str | None = None, grads: bool = True,
                             run=None) -> None:
    """Keys that no query of their batch element and key/value head sees (a padding mask, and
    with ``is_causal`` the keys after the last query) hold ``poison`` in k AND v: the output
    (and every gradient) equals the float64 reference's on finite inputs; dk, dv are 0 there.
    ``run(q, k, v, mask, causal)`` replaces ``attnlab.attention(..., backend=backend)``."""
    g = torch.Generator().manual_seed(11)
    B, H, Hkv, L, S, D = 3, 4, 2, 6, 9, 8
    q = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, S, D, generator=g, dtype=torch.float64) for _ in range(2))
    lengths = torch.tensor([9, 5, 3])
    mask = (torch.arange(S) < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
    hidden = ~mask[:, :, 0].expand(B, Hkv, S)
    if causal:
        hidden = hidden | (torch.arange(S) >= L)
    dtype = dtype or (torch.float32 if poison == "huge" else sweep_dtype(backend))
    device = device or sweep_device(backend)
    qp = q.to(device, dtype).requires_grad_(grads)
    kp = _poison(k, hidden, POISONS[poison]).to(device, dtype).requires_grad_(grads)
    vp = _poison(v, hidden, -POISONS[poison]).to(device, dtype).requires_grad_(grads)
    maskp = mask.to(device)
    if run is None:
        if refused(backend, kernel, qp, kp, vp, maskp, causal=causal, gqa=True):
            return
        out = attnlab.attention(qp, kp, vp, kernel=kernel, attn_mask=maskp, is_causal=causal, enable_gqa=True,
                                backend=backend)
    else:
        out = run(qp, kp, vp, maskp, causal)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = attnlab.attention(qr, kr, vr, kernel=kernel, attn_mask=mask, is_causal=causal, enable_gqa=True,
                            backend="reference")
    assert_close(out.cpu(), ref.detach())
    if not grads:
        return
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad(out, (qp, kp, vp), upstream.to(device, dtype))
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), upstream)
    for name, got, want in zip("qkv", got_grads, ref_grads, strict=True):
        assert_close(got.cpu(), want, what=f"d{name}")
    assert (got_grads[1].cpu()[hidden] == 0).all() and (got_grads[2].cpu()[hidden] == 0).all()


def check_blind_queries(backend: str, kernel: str, hiding: str, poison: str, *,
                        dtype: torch.dtype | None = None, device: str | None = None, run=None) -> None:
    """Key 5 holds NaN or +-inf and is visible to some queries only (the later ones under
    ``is_causal``, half of them under a mask): every query that cannot see it gets the output it
    would get with any finite key there. (Its value, and those queries' dq, are not covered.)"""
    g = torch.Generator().manual_seed(12)
    B, H, L, S, D, j = 2, 2, 8, 8, 8, 5
    q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for n in (L, S, S))
    causal = hiding == "causal"
    if causal:
        mask, sees = None, (torch.arange(L) >= j).expand(B, H, L)
    else:
        mask = torch.rand(B, 1, L, S, generator=g) > 0.4
        mask[..., : L // 2, j], mask[..., L // 2:, j] = False, True
        sees = mask[..., j].expand(B, H, L)
    kp = _poison(k, torch.arange(S) == j, POISONS[poison])
    dtype, device = dtype or sweep_dtype(backend), device or sweep_device(backend)
    qd, kd, vd = (t.to(device, dtype) for t in (q, kp, v))
    maskd = None if mask is None else mask.to(device)
    if run is None:
        if refused(backend, kernel, qd, kd, vd, maskd, causal=causal):
            return
        out = attnlab.attention(qd, kd, vd, kernel=kernel, attn_mask=maskd, is_causal=causal, backend=backend)
    else:
        out = run(qd, kd, vd, maskd, causal)
    ref = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, is_causal=causal, backend="reference")
    assert_close(out.cpu()[~sees], ref[~sees])


@pytest.mark.parametrize("grads", [True, False], ids=["autograd", "no-grad"])
@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("causal", [False, True], ids=["padding", "padding+causal"])
@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_padding_keys_are_inert_whatever_their_keys_and_values_hold(backend, kernel, causal, poison, grads):
    """With autograd attnlab checks k and v before the call, without it the output after it
    (and reruns): both paths."""
    check_padding_keys_inert(backend, kernel, causal, poison, grads=grads)


@pytest.mark.parametrize("poison", ["nan", "inf"])
@pytest.mark.parametrize("hiding", ["causal", "mask"])
@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_a_non_finite_key_never_reaches_the_queries_that_cannot_see_it(backend, kernel, hiding, poison):
    check_blind_queries(backend, kernel, hiding, poison)
