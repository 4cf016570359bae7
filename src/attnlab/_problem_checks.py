"""The argument checks of the front door (:func:`attnlab.problem.build_problem`), one message each."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch
from torch import Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def type_name(value: object) -> str:
    """The exact type of ``value`` for messages: ``float``, ``numpy.bool``, ``torch.Tensor``."""
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def check_flag(name: str, value: object) -> bool:
    """``value`` as a Python bool: a bool or a numpy bool (``numpy.bool_``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type_name(value)}")


def check_number(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type_name(value)}")
    value = float(value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def check_dropout(value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"dropout_p must be a real number in [0, 1), got {type_name(value)}")
    value = float(value)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(f"dropout_p must be in [0, 1), got {value}")
    return value


def check_tensors(query: object, key: object, value: object) -> None:
    """Types, dtypes, devices and ranks of q, k, v."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type_name(t)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims (..., L, D), got shape {tuple(t.shape)}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}"
        )
    if not (query.dim() == key.dim() == value.dim()):
        raise ValueError(
            f"query, key and value must have the same number of dims, got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )


def check_shapes(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool) -> None:
    """Batch dims, head dims, lengths and the GQA grouping (inputs with a head dim)."""
    *batch, H, _, D = query.shape
    *kbatch, Hkv, S, Dk = key.shape
    *vbatch, Hv, Sv, Dv = value.shape
    if kbatch != batch or vbatch != batch:
        raise ValueError(
            f"query, key and value must share the batch dims {tuple(batch)} (no broadcasting), got "
            f"{tuple(kbatch)} for key and {tuple(vbatch)} for value"
        )
    if Dk != D:
        raise ValueError(f"key's last dim must equal query's ({D}), got {Dk}")
    if Sv != S or Hv != Hkv:
        raise ValueError(
            f"value must have key's heads and length ({Hkv}, {S}) in dims -3 and -2, got ({Hv}, {Sv})"
        )
    if D == 0 or Dv == 0:
        raise ValueError(f"head dims must be >= 1, got D={D} and D_v={Dv}")
    if H != Hkv:
        if not enable_gqa:
            raise ValueError(
                f"query has {H} heads and key/value {Hkv}; pass enable_gqa=True for grouped-query attention"
            )
        if Hkv == 0 or H % Hkv != 0:
            raise ValueError(f"with enable_gqa, query heads ({H}) must be a multiple of key/value heads ({Hkv})")


def draw_dropout_seed(device: torch.device) -> int:
    """A 64-bit dropout seed from torch's default generator of ``device`` (the CPU generator for
    CPU tensors, the device's own for CUDA), so that ``torch.manual_seed`` fixes it."""
    words = torch.randint(0, 2**32, (2,), dtype=torch.int64, device=device).tolist()
    return words[0] | (words[1] << 32)


def canonical_mask(mask: object, query: Tensor, target: tuple[int, ...], Hkv: int, G: int) -> Tensor:
    """Check a bool mask against (B..., H, L, S) and view it as (n, h, g, L|1, S|1)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type_name(mask)}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"attn_mask must be a bool tensor (True = may attend), got {mask.dtype}; "
            "for an additive float mask m use `m == 0` (non-exponential kernels have no additive form)"
        )
    if mask.device != query.device:
        raise ValueError(f"attn_mask must be on {query.device}, got {mask.device}")
    if mask.dim() > len(target):
        raise ValueError(f"attn_mask must have at most {len(target)} dims, got shape {tuple(mask.shape)}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(target):
        raise ValueError(
            f"attn_mask of shape {tuple(mask.shape)} does not broadcast to (B..., H, L, S) = {target}"
        )
    mask = mask.reshape((1,) * (len(target) - mask.dim()) + tuple(mask.shape))
    *mbatch, mh, ml, ms = mask.shape
    if any(d != 1 for d in mbatch):
        mask = mask.expand(*target[:-3], mh, ml, ms).reshape(-1, mh, ml, ms)
    else:
        mask = mask.reshape(1, mh, ml, ms)
    n = mask.shape[0]
    return mask.reshape(n, Hkv, G, ml, ms) if mh != 1 else mask.reshape(n, 1, 1, ml, ms)
