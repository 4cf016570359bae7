"""attnlab.nn.MultiheadAttention against torch.nn.MultiheadAttention and attnlab.attention."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.nn import MultiheadAttention
from attnlab.testing import assert_close


def _pair(batch_first: bool, kdim=None, vdim=None):
    torch.manual_seed(0)
    ours = MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=vdim, dtype=torch.float64)
    theirs = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=vdim,
                                         dtype=torch.float64)
    with torch.no_grad():
        if kdim is None:
            wq, wk, wv = theirs.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = theirs.q_proj_weight, theirs.k_proj_weight, theirs.v_proj_weight
        bq, bk, bv = theirs.in_proj_bias.chunk(3)
        for lin, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        ours.out_proj.weight.copy_(theirs.out_proj.weight)
        ours.out_proj.bias.copy_(theirs.out_proj.bias)
    return ours, theirs


@pytest.mark.parametrize("batch_first", [True, False])
def test_softmax_matches_torch_with_masks(batch_first):
    ours, theirs = _pair(batch_first)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    blocked = torch.ones(7, 7, dtype=torch.bool).triu(1)
    a, wa = ours(x, x, x, key_padding_mask=pad, attn_mask=blocked)
    b, wb = theirs(x, x, x, key_padding_mask=pad, attn_mask=blocked)
    assert_close(a, b.detach())
    assert_close(wa, wb.detach(), what="weights")
    c, none = ours(x, x, x, need_weights=False, is_causal=True, key_padding_mask=pad)
    assert none is None
    assert_close(c, a.detach())


def test_cross_attention_with_other_widths():
    ours, theirs = _pair(True, kdim=5, vdim=3)
    x, kin, vin = torch.randn(2, 4, 16), torch.randn(2, 6, 5), torch.randn(2, 6, 3)
    x, kin, vin = x.double(), kin.double(), vin.double()
    a, wa = ours(x, kin, vin, average_attn_weights=False)
    b, wb = theirs(x, kin, vin, average_attn_weights=False)
    assert_close(a, b.detach())
    assert wa.shape == (2, 4, 4, 6)
    assert_close(wa, wb.detach(), what="weights")


def test_unbatched_and_kernel_switch_and_gqa():
    torch.manual_seed(0)
    mha = MultiheadAttention(16, 4, num_kv_heads=2, kernel="expressive", batch_first=True,
                             dtype=torch.float64)
    x = torch.randn(5, 16, dtype=torch.float64)
    out, w = mha(x, x, x)
    assert out.shape == (5, 16) and w.shape == (5, 5)
    q = mha.q_proj(x).view(5, 4, 4).transpose(0, 1)
    k = mha.k_proj(x).view(5, 2, 4).transpose(0, 1)
    v = mha.v_proj(x).view(5, 2, 4).transpose(0, 1)
    o = attnlab.attention(q, k, v, kernel="expressive", enable_gqa=True, backend="reference")
    assert_close(out, mha.out_proj(o.transpose(0, 1).reshape(5, 16)).detach())
    assert "kernel='expressive'" in repr(mha)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embed_dim": 10, "num_heads": 4}, ValueError, "must be divisible by num_heads"),
        ({"num_kv_heads": 3}, ValueError, "must be a multiple of num_kv_heads"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": "0.1"}, TypeError, r"dropout must be a real number in \[0, 1\), got str"),
        ({"kernel": "nope"}, ValueError, "kernel must be one of"),
    ],
)
def test_constructor_rejects(kwargs, error, match):
    args = {"embed_dim": 16, "num_heads": 4} | kwargs
    with pytest.raises(error, match=match):
        MultiheadAttention(**args)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        ({"key_padding_mask": torch.zeros(2, 5)}, TypeError, "key_padding_mask must be bool"),
        ({"key_padding_mask": torch.zeros(2, 4, dtype=torch.bool)}, ValueError, "key_padding_mask must have shape"),
        ({"attn_mask": torch.zeros(5, 5)}, TypeError, "attn_mask must be bool"),
        ({"attn_mask": torch.zeros(3, 5, 5, dtype=torch.bool)}, ValueError, "attn_mask must have shape"),
        ({"query": torch.randn(1, 2, 5, 16)}, ValueError, "must be 3-D"),
    ],
)
def test_forward_rejects(call, error, match):
    mha = MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    args = {"query": x, "key": x, "value": x} | call
    with pytest.raises(error, match=match):
        mha(args.pop("query"), args.pop("key"), args.pop("value"), **args)


# --- state_dict: torch.nn.MultiheadAttention's keys, both ways ------------------------------


def _inputs(batch_first: bool, kdim, vdim):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 7, 16, generator=g, dtype=torch.float64)
    k = torch.randn(3, 6, kdim or 16, generator=g, dtype=torch.float64)
    v = torch.randn(3, 6, vdim or 16, generator=g, dtype=torch.float64)
    if not batch_first:
        x, k, v = (t.transpose(0, 1) for t in (x, k, v))
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    return x, k, v, pad


def _assert_same_module_outputs(ours, theirs, batch_first, kdim, vdim):
    x, k, v, pad = _inputs(batch_first, kdim, vdim)
    for need_weights in (False, True):
        with torch.no_grad():
            out, w = ours(x, k, v, key_padding_mask=pad, need_weights=need_weights)
            ref, ref_w = theirs(x, k, v, key_padding_mask=pad, need_weights=need_weights)
        assert_close(out, ref)
        if need_weights:
            assert_close(w, ref_w)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("kdim", "vdim"), [(None, None), (12, 10)], ids=["packed", "kdim-vdim"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_loads_a_torch_state_dict_and_computes_what_torch_does(batch_first, kdim, vdim, bias):
    torch.manual_seed(1)
    theirs = torch.nn.MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first,
                                         dtype=torch.float64)
    ours = MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    _assert_same_module_outputs(ours, theirs, batch_first, kdim, vdim)
    # Nested under a prefix, as in a model's state_dict.
    outer = torch.nn.ModuleDict({"attn": MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=vdim,
                                                            batch_first=batch_first, dtype=torch.float64)})
    outer.load_state_dict(torch.nn.ModuleDict({"attn": theirs}).state_dict(), strict=True)
    _assert_same_module_outputs(outer["attn"], theirs, batch_first, kdim, vdim)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("kdim", "vdim"), [(None, None), (12, 10)], ids=["packed", "kdim-vdim"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_saves_a_state_dict_torch_loads_strictly(batch_first, kdim, vdim, bias):
    torch.manual_seed(2)
    ours = MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first, dtype=torch.float64)
    theirs = torch.nn.MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first,
                                         dtype=torch.float64)
    saved = ours.state_dict()
    assert list(saved) == list(theirs.state_dict())  # the same keys, in torch's order
    theirs.load_state_dict(saved, strict=True)
    _assert_same_module_outputs(ours, theirs, batch_first, kdim, vdim)
    # ... and back: attnlab loads its own (torch-layout) state_dict, and its older q_proj.* keys.
    again = MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first, dtype=torch.float64)
    again.load_state_dict(saved, strict=True)
    _assert_same_module_outputs(again, theirs, batch_first, kdim, vdim)
    legacy = {f"{name}.{p}": t for name in ("q_proj", "k_proj", "v_proj", "out_proj")
              for p, t in getattr(ours, name).state_dict().items()}
    again.load_state_dict(legacy, strict=True)
    _assert_same_module_outputs(again, theirs, batch_first, kdim, vdim)


def test_grouped_query_weights_have_no_torch_layout_and_say_so():
    gqa = MultiheadAttention(16, 4, num_kv_heads=2)
    saved = gqa.state_dict()
    assert "k_proj.weight" in saved and "in_proj_weight" not in saved  # attnlab's own keys
    MultiheadAttention(16, 4, num_kv_heads=2).load_state_dict(saved, strict=True)
    with pytest.raises(RuntimeError, match=r"grouped-query attention has no torch\.nn\.MultiheadAttention equivalent"):
        gqa.load_state_dict(torch.nn.MultiheadAttention(16, 4).state_dict())
    with pytest.raises(RuntimeError, match="add_bias_kv=True"):
        MultiheadAttention(16, 4).load_state_dict(torch.nn.MultiheadAttention(16, 4, add_bias_kv=True).state_dict())
