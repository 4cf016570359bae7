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
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..functional import attention
from ..metrics import skewness
from ..models import ModelConfig
from .approx_methods import method_output

__all__ = ["TRAIN_FIELDS", "LayerProbe", "evaluate_tokens", "hf_tokens", "oracle_gaps", "run_config", "source_for"]


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


#: the preset fields :func:`run_config` trains a model from (value-aware and sparse studies alike)
TRAIN_FIELDS = ("n_layers", "d_model", "n_heads", "context", "steps", "batch_size", "lr", "warmup_steps", "max_bytes")


def run_config(preset: Any, kind: str, kernel: str, out_dir: Path, seed: int, device: str = "cpu") -> Any:
    """The :class:`attnlab.config.RunConfig` of one model of the study, trained on ``device``
    (``cpu``, ``cuda`` or ``cuda:N``), checkpointed ten times over its steps
    (:func:`~attnlab.studies.base.checkpoint_every`) so a killed training cell resumes."""
    from ..train import DataConfig, RunConfig, TrainConfig
    from .base import checkpoint_every

    model = ModelConfig(kind=kind, kernel=kernel, n_layers=preset.n_layers, d_model=preset.d_model,
                        n_heads=preset.n_heads, context=preset.context, seed=seed)
    return RunConfig(model=model, data=DataConfig(max_bytes=preset.max_bytes),
                     train=TrainConfig(steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr,
                                       min_lr=preset.lr / 10, warmup_steps=preset.warmup_steps, seed=seed,
                                       device=device, ckpt_every=checkpoint_every(preset.steps),
                                       log_every=max(1, preset.steps // 5), progress=False, out_dir=str(out_dir)))


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


def _eval_inputs(cfg: Any, preset: Any, device: str) -> list[Tensor]:
    """The input batches :func:`evaluate_tokens` evaluates (same generator, same draws)."""
    from ..train import _batch

    source = source_for(preset.max_bytes, preset.context)
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    return [_batch(source, cfg.model, cfg.data, preset.eval_batch_size, gen, "validation")[0].to(device)
            for _ in range(preset.eval_batches)]


def _row_visible(cap: Any, b: Tensor | None, h: Tensor | None, t: Tensor | None, n_keys: int) -> Tensor:
    """The (k, S) visibility of query rows (b, h, t) of a captured call (causality and mask), or
    with ``b`` None that of every row, (B, H, L, S) (a broadcast view where there is no mask)."""
    B, H, L = cap.q.shape[:3]
    if b is None:
        vis = torch.ones(L, n_keys, dtype=torch.bool, device=cap.q.device)
        if cap.is_causal:
            vis = vis.tril()
        return (vis & cap.attn_mask if cap.attn_mask is not None else vis).expand(B, H, L, n_keys)
    vis = torch.ones(len(t), n_keys, dtype=torch.bool, device=t.device)
    if cap.is_causal:
        vis &= torch.arange(n_keys, device=t.device) <= t.unsqueeze(-1)
    if cap.attn_mask is not None:
        vis &= cap.attn_mask.expand(B, H, L, n_keys)[b, h, t]
    return vis


def _rel_errors(out: Tensor, o: Tensor) -> list[float]:
    """||out - o|| / ||o|| per row (rows with o = 0: the absolute error)."""
    norm = o.norm(dim=-1)
    return ((out - o).norm(dim=-1) / torch.where(norm > 0, norm, 1.0)).cpu().tolist()


def _sample_rows(counts: Tensor, r: int, k: int, seed: int) -> Tensor:
    """Up to ``k`` flat row indices drawn uniformly without replacement among the rows whose
    visible-key count (``counts``) exceeds ``r`` (a row with <= r keys is reproduced exactly by
    every oracle), from one seeded permutation: the same draw for every r, less the rows too
    short."""
    perm = torch.randperm(counts.numel(), generator=torch.Generator().manual_seed(seed)).to(counts.device)
    return perm[counts[perm] > r][:k]


@torch.no_grad()
def oracle_gaps(model: torch.nn.Module, cfg: Any, preset: Any, r: int, device: str) -> dict[str, Any]:
    """va-greedy against va-swap and va-exact on a seeded random subsample of query rows of every
    layer of the UNMODIFIED model, on the evaluation inputs of :func:`evaluate_tokens`.

    Per layer, Q/K/V are captured (:func:`attnlab.capture.capture_qkv`), the exact weights p
    recomputed, and ``preset.gap_queries`` rows (over sequences x heads x positions) drawn
    uniformly among those with more than ``r`` visible keys (:func:`_sample_rows`, seed
    ``1000 * train seed + layer``). Each row is solved in float64 on its visible keys only, by
    va-greedy, va-swap and, where C(visible keys, min(r, D + 1)) <= ``preset.gap_exact_max_subsets``,
    va-exact. Returns per layer the relative output errors ``||o_hat - o|| / ||o||`` of each
    oracle per query (``err_exact``: None where it did not run), each query's sequence and
    visible-key count, and the seconds each oracle took.
    """
    from ..approx.value_aware import va_exact, va_greedy, va_swap
    from ..capture import capture_qkv

    model = model.to(device).eval()
    s = min(r, preset.head_dim + 1)
    caps: dict[int, list[Any]] = {}  # layer -> one capture per evaluation batch
    for x in _eval_inputs(cfg, preset, device):
        for cap in capture_qkv(model, x):
            caps.setdefault(cap.layer, []).append(cap)
    out: dict[str, Any] = {k: [] for k in ("err_greedy", "err_swap", "err_exact", "query_seq", "query_keys")}
    secs = {"greedy": 0.0, "swap": 0.0, "exact": 0.0}
    for layer, parts in sorted(caps.items()):
        q = torch.cat([c.q for c in parts])  # (N, H, L, D), sequences in evaluation order
        k = torch.cat([c.k for c in parts]).repeat_interleave(q.shape[1] // parts[0].k.shape[1], dim=1)
        v = torch.cat([c.v for c in parts]).repeat_interleave(q.shape[1] // parts[0].v.shape[1], dim=1)
        n_h, n_l = q.shape[1:3]
        n_s = k.shape[-2]
        counts = torch.cat([_row_visible(c, None, None, None, n_s).sum(-1).flatten() for c in parts])
        pick = _sample_rows(counts, r, preset.gap_queries, 1000 * cfg.train.seed + layer)
        seq, head, pos = pick // (n_h * n_l), (pick // n_l) % n_h, pick % n_l
        if len(pick) == 0:  # no row has more than r visible keys
            for key in out:
                out[key].append([])
            continue
        bsz = parts[0].q.shape[0]
        visr = torch.cat([_row_visible(parts[int(seq[i]) // bsz], seq[i:i + 1] % bsz, head[i:i + 1], pos[i:i + 1],
                                       n_s) for i in range(len(pick))])
        # the exact weights of the chosen rows alone (one query each, its visibility as the mask)
        _, pr = attention(q[seq, head, pos][:, None, None], k[seq, head][:, None], v[seq, head][:, None],
                          kernel=parts[0].kernel, attn_mask=visr[:, None, None], scale=parts[0].scale,
                          eps=cfg.model.attn_eps, return_weights=True)
        pr, vr = pr[:, 0, 0].double(), v[seq, head].double()  # (k, S), (k, S, D)
        # move each row's visible keys to the front (in order) and keep the widest row's count
        order = torch.sort((~visr).to(torch.uint8), dim=-1, stable=True).indices
        keys = visr.sum(-1)
        order = order[:, :int(keys.max())]
        pr, visr = pr.gather(-1, order), visr.gather(-1, order)
        vr = vr.gather(-2, order.unsqueeze(-1).expand(-1, -1, vr.shape[-1]))
        pr = torch.where(visr, pr, 0.0)
        o = (pr.unsqueeze(-2) @ vr).squeeze(-2)
        errs = {}
        for name, fn in (("greedy", va_greedy), ("swap", va_swap)):
            t0 = time.perf_counter()
            errs[name] = _rel_errors(fn(pr, vr, r, visible=visr).output, o)
            secs[name] += time.perf_counter() - t0
        exact: list[float | None] = [None] * len(keys)
        ok = torch.tensor([math.comb(int(n), s) <= preset.gap_exact_max_subsets for n in keys.tolist()],
                          dtype=torch.bool, device=keys.device)
        if bool(ok.any()):
            t0 = time.perf_counter()
            w = int(keys[ok].max())
            sol = va_exact(pr[ok][:, :w], vr[ok][:, :w], r, visible=visr[ok][:, :w],
                           max_subsets=math.comb(w, s)).output
            for i, e in zip(ok.nonzero().flatten().tolist(), _rel_errors(sol, o[ok]), strict=True):
                exact[i] = e
            secs["exact"] += time.perf_counter() - t0
        out["err_greedy"].append(errs["greedy"])
        out["err_swap"].append(errs["swap"])
        out["err_exact"].append(exact)
        out["query_seq"].append(seq.cpu().tolist())
        out["query_keys"].append(keys.cpu().tolist())
    return {**out, **{f"seconds_{k}": v for k, v in secs.items()}}
