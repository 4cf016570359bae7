"""Each rejected input raises the documented error, naming the argument, before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab

q = torch.randn(2, 4, 6, 8)
kv = torch.randn(2, 2, 7, 8)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"query": [1.0]}, TypeError, "query must be a torch.Tensor"),
        ({"key": q.long()}, TypeError, "key must be float16, bfloat16, float32 or float64"),
        ({"value": q.double()}, TypeError, "must share a dtype"),
        ({"query": torch.randn(8)}, ValueError, "query must have at least 2 dims"),
        ({"key": torch.randn(4, 6, 8)}, ValueError, "same number of dims"),
        ({"key": torch.randn(3, 4, 6, 8), "value": torch.randn(3, 4, 6, 8)}, ValueError, "share the batch dims"),
        ({"key": torch.randn(2, 4, 6, 5)}, ValueError, "key's last dim must equal query's"),
        ({"value": torch.randn(2, 4, 5, 8)}, ValueError, "value must have key's heads and length"),
        ({"query": torch.randn(2, 4, 6, 0), "key": torch.randn(2, 4, 6, 0)}, ValueError, "head dims must be >= 1"),
        ({"key": kv, "value": kv}, ValueError, "pass enable_gqa=True"),
        ({"key": torch.randn(2, 3, 7, 8), "value": torch.randn(2, 3, 7, 8), "enable_gqa": True},
         ValueError, "must be a multiple of key/value heads"),
        ({"kernel": "softmaxx"}, ValueError, "kernel must be one of"),
        ({"kernel": 3}, TypeError, "kernel must be a str"),
        ({"backend": "fast"}, ValueError, "backend must be 'auto' or one of"),
        ({"backend": None}, TypeError, "backend must be a str"),
        ({"backend": "sdpa", "kernel": "expressive"}, ValueError, "'sdpa' does not support kernel 'expressive'"),
        ({"backend": "chunked", "return_weights": True}, ValueError, "return_weights=True needs backend 'reference'"),
        ({"return_weights": 1}, TypeError, "return_weights must be a bool"),
        ({"is_causal": "yes"}, TypeError, "is_causal must be a bool"),
        ({"enable_gqa": 1}, TypeError, "enable_gqa must be a bool"),
        ({"is_causal": np.int64(1)}, TypeError, "is_causal must be a bool, got numpy.int64"),
        ({"scale": np.bool_(True)}, TypeError, "scale must be a real number, got numpy.bool"),
        ({"scale": "0.1"}, TypeError, "scale must be a real number"),
        ({"scale": True}, TypeError, "scale must be a real number"),
        ({"scale": 0.0}, ValueError, "scale must be finite and > 0"),
        ({"scale": float("nan")}, ValueError, "scale must be finite and > 0"),
        ({"eps": -1e-3}, ValueError, "eps must be finite and >= 0"),
        ({"eps": float("inf")}, ValueError, "eps must be finite and >= 0"),
        ({"attn_mask": torch.zeros(6, 6)}, TypeError, "attn_mask must be a bool tensor"),
        ({"attn_mask": [[True]]}, TypeError, "attn_mask must be a torch.Tensor or None"),
        ({"attn_mask": torch.ones(6, 5, dtype=torch.bool)}, ValueError, "does not broadcast"),
        ({"attn_mask": torch.ones(3, 4, 6, 6, dtype=torch.bool)}, ValueError, "does not broadcast"),
        ({"attn_mask": torch.ones(1, 2, 4, 6, 6, dtype=torch.bool)}, ValueError, "at most 4 dims"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_input_is_rejected(kwargs, error, match):
    args = {"query": q, "key": torch.randn(2, 4, 6, 8), "value": torch.randn(2, 4, 6, 8)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        attnlab.attention(args.pop("query"), args.pop("key"), args.pop("value"), **args)


def test_bad_mask_device_is_rejected():
    meta_mask = torch.ones(6, 6, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="attn_mask must be on cpu"):
        attnlab.attention(q, q, q, attn_mask=meta_mask)


def test_bad_devices_are_rejected():
    with pytest.raises(ValueError, match="must be on one device"):
        attnlab.attention(q, q.to("meta"), q)


def test_2d_inputs_reject_a_3d_mask():
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="at most 2 dims for 2-D inputs"):
        attnlab.attention(x, x, x, attn_mask=torch.ones(1, 5, 5, dtype=torch.bool))


def test_expressive_attention_refuses_a_kernel():
    with pytest.raises(TypeError, match="fixes kernel='expressive'"):
        attnlab.expressive_attention(q, q, q, kernel="softmax")


def test_numpy_bools_are_accepted_as_flags():
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    shared = torch.randn(1, 1, 6, 8, dtype=torch.float64)
    for flag in (True, False):
        want = attnlab.attention(x, shared, shared, is_causal=flag, enable_gqa=True, return_weights=True)
        got = attnlab.attention(x, shared, shared, is_causal=np.bool_(flag), enable_gqa=np.bool_(True),
                                return_weights=np.bool_(True))
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
