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
    ``allowed`` keys of each row (fewer where fewer are allowed; ties by lower index).

    O(S) per row: the count-th largest value t from a partial top-k, then every key above t and,
    in index order, as many keys equal to t as are still missing."""
    masked = torch.where(allowed, crit, -torch.inf)
    count = torch.as_tensor(count, device=crit.device)
    if count.ndim:
        count = count.unsqueeze(-1)
    count = count.clamp(0, crit.shape[-1])
    kmax = int(count.max())
    if kmax == 0:
        return torch.zeros_like(allowed)
    vals = masked.topk(kmax, dim=-1).values  # descending
    kth = vals.gather(-1, (count - 1).clamp_min(0).expand(*vals.shape[:-1], 1))
    above = masked > kth
    tie = allowed & (masked == kth)
    need = count - above.sum(-1, keepdim=True)
    return allowed & (count > 0) & (above | (tie & (tie.cumsum(-1) <= need)))


def sinks_and_window(ctx: Context, sinks: Tensor | int, window: Tensor | int) -> Tensor:
    """The first ``sinks`` and the last ``window`` visible keys (by position) of each row."""
    pos = ctx.positions.to(ctx.s.dtype)
    first = take(-pos, ctx.visible, sinks)
    return first | take(pos, ctx.visible & ~first, window)


def key_bytes(ctx: Context, per_key: float) -> Tensor:
    """(N, H_kv, G, L) bytes of a summary of ``per_key`` bytes for every visible key."""
    return ctx.n_visible.double() * per_key
