"""Building blocks of the selectors: the top keys by a criterion among the allowed ones
(:func:`take`), attention sinks and a sliding window (:func:`sinks_and_window`), and the bytes of a
per-key summary (:func:`key_bytes`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .harness import Context

__all__ = ["key_bytes", "sinks_and_window", "take"]


def take(crit: Tensor, allowed: Tensor, count: Tensor | int) -> Tensor:
    """Bool mask of the ``count`` (int or per-row (..., L) tensor) largest ``crit`` among the
    ``allowed`` keys of each row (fewer where fewer are allowed; ties by lower index)."""
    masked = torch.where(allowed, crit, -torch.inf)
    order = masked.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(crit.shape[-1], device=crit.device)
                                            .expand_as(order).contiguous())
    count = torch.as_tensor(count, device=crit.device)
    if count.ndim:
        count = count.unsqueeze(-1)
    return allowed & (rank < count)


def sinks_and_window(ctx: Context, sinks: Tensor | int, window: Tensor | int) -> Tensor:
    """The first ``sinks`` and the last ``window`` visible keys (by position) of each row."""
    pos = ctx.positions.to(ctx.s.dtype)
    first = take(-pos, ctx.visible, sinks)
    return first | take(pos, ctx.visible & ~first, window)


def key_bytes(ctx: Context, per_key: float) -> Tensor:
    """(N, H_kv, G, L) bytes of a summary of ``per_key`` bytes for every visible key."""
    return ctx.n_visible.double() * per_key
