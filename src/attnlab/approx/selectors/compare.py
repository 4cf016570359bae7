"""Comparing selectors against oracle top-k and the value-aware oracle over KV budgets
(:func:`compare`, issue 14): the relative output error of each method beside the two references
at the same number of keys, and what each read."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from .harness import select

__all__ = ["compare"]


def _row_error(o: Tensor, o_hat: Tensor) -> Tensor:
    """||o - o_hat|| / ||o|| per row (...), in float64; NaN where ||o|| = 0 (no relative error)."""
    o, o_hat = o.double(), o_hat.double()
    norm = o.norm(dim=-1)
    return torch.where(norm > 0, (o - o_hat).norm(dim=-1) / norm.clamp_min(1e-300), math.nan)


def _mean_error(o: Tensor, o_hat: Tensor) -> float:
    """The mean relative row error over the rows with ||o|| > 0."""
    return float(_row_error(o, o_hat).nanmean())


def compare(query: Tensor, key: Tensor, value: Tensor, *, methods: Iterable[str], budgets: Iterable[int],
            kernel: str = "softmax", is_causal: bool = False, attn_mask: Tensor | None = None,
            mode: str = "prefill", seed: int = 0, oracle: str = "va-greedy",
            options: Mapping[str, Mapping[str, object]] | None = None) -> list[dict[str, object]]:
    """Relative output error of each method at each budget, beside oracle top-k and the
    value-aware oracle ``oracle`` at the same number of keys.

    ``mode="prefill"`` scores every query; ``"decode"`` only the last query of each sequence
    (its cache: every key it may see; methods with a history, such as ``h2o``, use the earlier
    queries). Returns one record per (method, budget): ``err`` (mean over rows of
    ||o - o_hat|| / ||o||), ``err_topk``, ``err_oracle``, ``gap_closed`` = (err_topk - err) /
    (err_topk - err_oracle) (NaN where the gap is below 1e-12), and the mean ``rows_used``,
    ``rows_read``, ``bytes_read`` per query.

    Raises:
        ValueError: ``mode`` not prefill/decode, or as :func:`select`.
    """
    from ...functional import attention
    from ..oracles import oracle_attention

    if mode not in ("prefill", "decode"):
        raise ValueError(f"mode must be 'prefill' or 'decode', got {mode!r}")
    options = dict(options or {})
    rows = slice(None) if mode == "prefill" else slice(-1, None)
    exact = attention(query, key, value, kernel=kernel, is_causal=is_causal, attn_mask=attn_mask)[..., rows, :]
    records = []
    for r in budgets:
        topk = select(query, key, value, method="topk", top_k=r, kernel=kernel, is_causal=is_causal,
                      attn_mask=attn_mask)
        err_topk = _mean_error(exact, topk.output[..., rows, :])
        orc = oracle_attention(query, key, value, method=oracle, r=r, kernel=kernel, is_causal=is_causal,
                               attn_mask=attn_mask)
        err_oracle = _mean_error(exact, orc[..., rows, :])
        for m in methods:
            sel = select(query, key, value, method=m, top_k=r, kernel=kernel, is_causal=is_causal,
                         attn_mask=attn_mask, seed=seed, **dict(options.get(m, {})))
            err = _mean_error(exact, sel.output[..., rows, :])
            gap = err_topk - err_oracle
            records.append({
                "method": m, "budget": r, "err": err, "err_topk": err_topk, "err_oracle": err_oracle,
                "gap_closed": (err_topk - err) / gap if gap > 1e-12 else math.nan,
                "rows_used": float(sel.rows_used[..., rows].double().mean()),
                "rows_read": float(sel.rows_read[..., rows].double().mean()),
                "bytes_read": float(sel.bytes_read[..., rows].mean()),
            })
    return records
