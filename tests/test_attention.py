"""Every registered backend x kernel x dtype x device x case against the float64 reference, with gradients.

Registering a backend enrols it here from its record (:class:`attnlab.backends.Backend`): every
kernel it computes, every dtype (float32/float64 on every case, bfloat16/float16 on the
low-precision cases) and every device this machine has. An input the record refuses (``triton``:
float64, or CPU tensors without Triton's interpreter; ``linear``: a mask that varies over queries)
must raise exactly the record's reason, which is asserted; tests/test_sweep.py checks the enrolment.
"""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.backends.chunked import chunked_attention
from attnlab.functional import canonicalize
from attnlab.testing import assert_close, plain_attention
from cases import CASES, LOW_PRECISION_CASES, Case, backend_kernel_pairs, devices_here, refused

KERNELS = attnlab.available_kernels()
PAIRS = backend_kernel_pairs()
DEVICES = devices_here()


def _run(case: Case, q, k, v, mask, **kw):
    return attnlab.attention(q, k, v, attn_mask=mask, is_causal=case.causal, enable_gqa=case.gqa, **kw)


def _ref_and_grads(case: Case, kernel: str, upstream_seed: int = 7):
    q, k, v, mask = case.make(torch.float64, requires_grad=True)
    out = _run(case, q, k, v, mask, kernel=kernel, backend="reference")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v), g)
    return out.detach(), grads, g


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("device", DEVICES)
def test_backend_matches_float64_reference(backend, kernel, case, dtype, device):
    q, k, v, mask = case.make(dtype, requires_grad=True, device=device)
    if refused(backend, kernel, q, k, v, mask, causal=case.causal, gqa=case.gqa):
        return
    ref, ref_grads, g = _ref_and_grads(case, kernel)
    out = _run(case, q, k, v, mask, kernel=kernel, backend=backend)
    assert out.dtype == dtype and out.device.type == device
    assert_close(out.cpu(), ref)
    grads = torch.autograd.grad(out, (q, k, v), g.to(device, dtype))
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert_close(got.cpu(), want, what=f"d{name}")


@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_follows_flash_attention_rule(backend, kernel, case, dtype, device):
    """Error against float64 at most twice plain PyTorch's in the same dtype (+ a floor)."""
    q, k, v, mask = case.make(dtype, requires_grad=True, device=device)
    if refused(backend, kernel, q, k, v, mask, causal=case.causal, gqa=case.gqa):
        return
    ref, ref_grads, g = _ref_and_grads(case, kernel)
    out = _run(case, q, k, v, mask, kernel=kernel, backend=backend)
    assert out.dtype == dtype
    # The plain implementation has no GQA: give it repeated key/value heads.
    rep = case.H // (case.Hkv or case.H)
    kr, vr = (x.repeat_interleave(rep, dim=1) for x in (k, v))
    plain = plain_attention(q, kr, vr, kernel=kernel, attn_mask=mask, is_causal=case.causal)
    assert_close(out.cpu(), ref, plain=plain.cpu())
    g = g.to(device, dtype)
    grads = torch.autograd.grad(out, (q, k, v), g)
    plain_grads = torch.autograd.grad(plain, (q, k, v), g)
    for name, got, pl, want in zip("qkv", grads, plain_grads, ref_grads, strict=True):
        assert_close(got.cpu(), want, plain=pl.cpu(), what=f"d{name}")


@pytest.mark.parametrize("case", [Case(B=1, H=2, L=7, S=9, D=4, mask="empty-rows"),
                                  Case(B=1, H=2, Hkv=1, L=6, D=4, causal=True)], ids=lambda c: c.id)
@pytest.mark.parametrize(("backend", "kernel"), PAIRS, ids=lambda x: x)
def test_gradcheck(backend, kernel, case):
    q, k, v, mask = case.make(torch.float64, requires_grad=True)
    if refused(backend, kernel, q, k, v, mask, causal=case.causal, gqa=case.gqa):
        return
    assert torch.autograd.gradcheck(
        lambda q, k, v: _run(case, q, k, v, mask, kernel=kernel, backend=backend), (q, k, v)
    )


def test_reference_matches_a_per_query_loop():
    """The reference is checked once by a loop over single queries written from the formula."""
    case = Case(B=1, H=2, L=6, S=5, D=4, mask="random", causal=True)
    q, k, v, mask = case.make()
    for kernel in KERNELS:
        kern = attnlab.get_kernel(kernel)
        out = _run(case, q, k, v, mask, kernel=kernel, backend="reference")
        for h in range(2):
            for i in range(6):
                vis = [j for j in range(5) if mask[0, 0, i, j] and j <= i]
                s = torch.stack([q[0, h, i] @ k[0, h, j] / 2.0 for j in vis]) if vis else torch.zeros(0)
                if kern.exponential and vis:
                    a = torch.exp(s - s.max())
                    want = (a[:, None] * v[0, h, vis]).sum(0) / a.sum()
                elif vis:
                    a = kern.weights(s)
                    want = (a[:, None] * v[0, h, vis]).sum(0) / (a.sum() + 1e-6)
                else:
                    want = torch.zeros(4, dtype=torch.float64)
                torch.testing.assert_close(out[0, h, i], want)


@pytest.mark.parametrize("block_q", [1, 5, 16, 64])
@pytest.mark.parametrize("tile_elements", [1, 100, 1 << 20])
@pytest.mark.parametrize("kernel", ["softmax", "expressive"])
def test_chunked_tiling_does_not_change_the_result(block_q, tile_elements, kernel):
    case = Case(B=2, H=4, Hkv=2, L=37, S=37, causal=True, mask="random")
    q, k, v, mask = case.make(requires_grad=True)
    problem, shape = canonicalize(q, k, v, mask, True, None, True, 1e-6, attnlab.get_kernel(kernel))
    out = chunked_attention(problem, tile_elements=tile_elements, block_q=block_q).reshape(shape)
    ref = _run(case, q, k, v, mask, kernel=kernel, backend="reference")
    assert_close(out, ref.detach())
    g = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), g),
                         torch.autograd.grad(ref, (q, k, v), g), strict=True):
        assert_close(got, want)


def test_chunked_rejects_bad_tiles():
    q = torch.randn(1, 1, 4, 2)
    problem, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, attnlab.get_kernel("expressive"))
    with pytest.raises(ValueError, match="tile_elements must be >= 1"):
        chunked_attention(problem, tile_elements=0)
    with pytest.raises(ValueError, match="block_q must be >= 1"):
        chunked_attention(problem, block_q=0)
