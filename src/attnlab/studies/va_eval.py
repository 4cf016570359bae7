"""Study 1's measurements: the layer probe, one model's training, and the per-token evaluation of
a model with an approximation in every layer (attnlab models and local Hugging Face models).

Every evaluation returns, besides the means, the loss and correctness of each evaluated token and
the sequence it belongs to (``token_loss``, ``token_correct``, ``token_seq``): the same tokens for
every method of one model (the batches come from a generator seeded by the training seed), so the
claims can pair them (:mod:`attnlab.studies.va_report`).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..functional import attention
from ..metrics import skewness
from ..models import ModelConfig
from .approx_methods import method_output

__all__ = ["LayerProbe", "evaluate_tokens", "hf_tokens", "run_config", "source_for"]


class LayerProbe:
    """An attention function for ``model.set_attention``: ``method`` at budget ``r`` (or
    ``"exact"``), which also accumulates, per layer, ||O - O_exact||^2, ||O_exact||^2 and the
    skewness of the exact weights."""

    def __init__(self, method: str, r: int, *, kernel: str, eps: float, layer: int, stats: dict[int, list[float]],
                 features_per_r: int = 4) -> None:
        self.method, self.r, self.kernel, self.eps, self.layer, self.stats = method, r, kernel, eps, layer, stats
        self.features_per_r = features_per_r

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool = False, attn_mask: Tensor | None = None,
                 scale: float | None = None, enable_gqa: bool = False) -> Tensor:
        exact, p = attention(q, k, v, kernel=self.kernel, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                             enable_gqa=enable_gqa, eps=self.eps, return_weights=True)
        out = exact
        if self.method != "exact":
            out = method_output(self.method, self.r, q, k, v, kernel=self.kernel, attn_mask=attn_mask,
                                is_causal=is_causal, scale=scale, eps=self.eps, features_per_r=self.features_per_r)[0]
        L, S = p.shape[-2:]
        vis = torch.ones(L, S, dtype=torch.bool, device=p.device).tril() if is_causal else None
        if attn_mask is not None:
            vis = attn_mask if vis is None else attn_mask & vis
        acc = self.stats.setdefault(self.layer, [0.0, 0.0, 0.0, 0.0])
        o, o_exact = out.detach().double(), exact.detach().double()
        acc[0] += float((o - o_exact).square().sum())
        acc[1] += float(o_exact.square().sum())
        acc[2] += float(skewness(p.detach().double(), visible=vis).sum())
        acc[3] += p.shape[:-1].numel()
        return out


def run_config(preset: Any, kind: str, kernel: str, out_dir: Path, seed: int, device: str = "cpu") -> Any:
    """The :class:`attnlab.config.RunConfig` of one model of the study, trained on ``device``
    (``cuda:N`` trains on ``cuda`` with device N made current by the launcher)."""
    from ..train import DataConfig, RunConfig, TrainConfig

    model = ModelConfig(kind=kind, kernel=kernel, n_layers=preset.n_layers, d_model=preset.d_model,
                        n_heads=preset.n_heads, context=preset.context, seed=seed)
    return RunConfig(model=model, data=DataConfig(max_bytes=preset.max_bytes),
                     train=TrainConfig(steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr,
                                       min_lr=preset.lr / 10, warmup_steps=preset.warmup_steps, seed=seed,
                                       device=device.split(":")[0], log_every=max(1, preset.steps // 5),
                                       progress=False, out_dir=str(out_dir)))


@functools.lru_cache(maxsize=4)
def source_for(max_bytes: int, context: int) -> Any:
    """The corpus batch source (built once per process)."""
    from ..train import DataConfig, make_source

    return make_source(DataConfig(max_bytes=max_bytes), ModelConfig(context=context))


def _layer_stats(stats: dict[int, list[float]]) -> dict[str, list[float]]:
    return {"layer_error": [math.sqrt(s[0] / s[1]) if s[1] > 0 else 0.0 for _, s in sorted(stats.items())],
            "skewness": [s[2] / s[3] for _, s in sorted(stats.items())]}


def _tokens(logits: Tensor, targets: Tensor, mask: Tensor, first_seq: int) -> dict[str, list]:
    """Per selected token: loss (nats), correctness (0/1) and sequence index."""
    loss = torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
    correct = logits[mask].argmax(-1) == targets[mask]
    seq = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask] + first_seq
    return {"token_loss": [round(x, 5) for x in loss.double().cpu().tolist()],
            "token_correct": correct.int().cpu().tolist(), "token_seq": seq.cpu().tolist()}


def _summary(tokens: dict[str, list]) -> dict[str, Any]:
    n = max(len(tokens["token_loss"]), 1)
    loss = sum(tokens["token_loss"]) / n
    return {"loss": loss, "perplexity": math.exp(loss), "error_pct": 100 * (1 - sum(tokens["token_correct"]) / n),
            "tokens": len(tokens["token_loss"])}


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, cfg: Any, preset: Any, method: str, r: int, device: str) -> dict[str, Any]:
    """Loss, perplexity, error %, per-layer output error and skewness of ``model`` with ``method``
    at budget ``r`` in every layer, and the per-token values (see the module doc), on
    ``eval_batches`` validation batches of ``eval_batch_size`` (the batches of
    :func:`attnlab.train.evaluate`: a generator seeded by ``train.seed + 1``)."""
    from ..train import _batch

    stats: dict[int, list[float]] = {}
    for i in range(cfg.model.n_layers):
        model.set_attention(LayerProbe(method, r, kernel=cfg.model.kernel, eps=cfg.model.attn_eps, layer=i,
                                       stats=stats, features_per_r=preset.features_per_r), layers=[i])
    model = model.to(device).eval()
    source = source_for(preset.max_bytes, preset.context)
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    parts: dict[str, list] = {"token_loss": [], "token_correct": [], "token_seq": []}
    for b in range(preset.eval_batches):
        x, y, m = (t.to(device) for t in _batch(source, cfg.model, cfg.data, preset.eval_batch_size, gen,
                                                  "validation"))
        for key, values in _tokens(model(x), y, m, b * preset.eval_batch_size).items():
            parts[key] += values
    return {**_summary(parts), **_layer_stats(stats), **parts}


def hf_tokens(model: Any, ids: Tensor, method: str, r: int, device: str) -> dict[str, Any]:
    """The same as :func:`evaluate_tokens` for a Hugging Face causal LM (softmax) on ``ids``."""
    from ..integrations import hf

    stats: dict[int, list[float]] = {}

    def forward(module, q, k, v, mask, *args, **kw):
        probe = LayerProbe(method, r, kernel="softmax", eps=0.0, layer=int(module.layer_idx), stats=stats)
        return hf.attention_forward(module, q, k, v, mask, *args, attention_fn=probe, **kw)

    previous = model.config._attn_implementation
    model.set_attn_implementation(hf.register_function(f"attnlab-study-{method}-{r}", forward))
    try:
        with torch.no_grad():
            ids = ids.to(device)
            logits = model.to(device)(input_ids=ids).logits
    finally:
        model.set_attn_implementation(previous)
    mask = torch.ones_like(ids[:, 1:], dtype=torch.bool)
    tokens = _tokens(logits[:, :-1], ids[:, 1:], mask, 0)
    return {**_summary(tokens), **_layer_stats(stats), **tokens}
