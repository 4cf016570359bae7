"""Property-based: chunked == reference over random shapes, masks, kernels and tilings."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlab
from attnlab.backends.chunked import chunked_attention
from attnlab.functional import canonicalize
from attnlab.testing import assert_close


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(1, 2), Hkv=st.integers(1, 2), G=st.integers(1, 3), L=st.integers(1, 20),
    S=st.integers(1, 20), D=st.integers(1, 6), Dv=st.integers(1, 5),
    causal=st.booleans(), mask_kind=st.sampled_from([None, "full", "rows", "keys"]),
    kernel=st.sampled_from(attnlab.available_kernels()[:5]),
    block_q=st.integers(1, 8), tile=st.sampled_from([1, 50, 1 << 20]), seed=st.integers(0, 10**6),
)
def test_chunked_equals_reference(B, Hkv, G, L, S, D, Dv, causal, mask_kind, kernel, block_q, tile, seed):
    g = torch.Generator().manual_seed(seed)
    H = Hkv * G
    q = torch.randn(B, H, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, Hkv, S, Dv, generator=g, dtype=torch.float64, requires_grad=True)
    shapes = {"full": (B, H, L, S), "rows": (B, 1, L, 1), "keys": (S,)}
    mask = torch.rand(shapes[mask_kind], generator=g) > 0.4 if mask_kind else None
    kern = attnlab.get_kernel(kernel)
    problem, shape = canonicalize(q, k, v, mask, causal, None, G > 1, 1e-6, kern)
    out = chunked_attention(problem, tile_elements=tile, block_q=block_q).reshape(shape)
    ref = attnlab.attention(q, k, v, kernel=kern, attn_mask=mask, is_causal=causal,
                            enable_gqa=G > 1, backend="reference")
    assert_close(out, ref.detach())
    up = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), up),
                         torch.autograd.grad(ref, (q, k, v), up), strict=True):
        assert_close(got, want)
