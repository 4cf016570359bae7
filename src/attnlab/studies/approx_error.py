"""``attnlab approx-error``: how well approximations reproduce the attention *output*, over r.

For Q/K/V from (a) a synthetic generator over a temperature grid or (b) a model (an attnlab
checkpoint written by ``attnlab train``, or a local Hugging Face causal LM), and any kernel,
the exact weights p and output O come from ``attnlab.attention(..., return_weights=True)``;
each method gives O_hat at budget r, and the harness reports

- value-aware error ``||O - O_hat||_F / ||O||_F`` (all queries of a layer / temperature),
- value-oblivious error ``mean_i ||p_i - p_hat_i||_1`` (oracles only: they return weights),
- top-r mass, entropy and skewness (``1 - H / log n_visible``) of p, means over queries.

Methods and their budgets (r is the x axis):

| method | budget at r | applies to |
|---|---|---|
| ``topr``, ``topr-l2``, ``va-greedy``, ``va-swap``, ``omp`` | r keys per query (oracles, need p and O) | any kernel |
| ``va-exact`` | r keys; only when C(S, min(r, D_v + 1)) <= ``va_exact_max_subsets`` | any kernel |
| ``topk`` | ``top_k = r`` | any kernel |
| ``performer`` | ``num_features = features_per_r * r`` (default 4 r, see below) | softmax |
| ``nystrom`` | ``num_landmarks = r`` (r <= L) | softmax, non-causal, no mask |
| ``elu-linear``, ``cosformer`` | none: their own kernels, one constant line | any (they approximate nothing) |
| any other registered approximation | its record's budget option = r | what its record takes |

The practical methods are the registered approximations (:func:`attnlab.approx.available_approximations`,
less deprecated aliases); each one's record (:func:`attnlab.approx.get_record`) says what it refuses and
which option is its budget, so registering an approximation makes it a choice of ``--methods``.

Performer's budget: F = r would match the work of an r-term weighted sum per query, but FAVOR+
with F < D features is mostly noise, so the default spends 4 r features (``--features-per-r``).

A query that sees fewer than r keys, or whose weights are all zero, is reproduced exactly by
keeping what it sees: :func:`attnlab.approx.oracle_attention` returns the exact output there (as ``topk``).

Synthetic data: q, k, v ~ N(0, 1) (B, H, L, D) from a seeded generator, scores
``s = q.k / (sqrt(D) T)``: temperature T < 1 sharpens the weights, T > 1 flattens them. The
homogeneous kernels (squared, relu, relu2) give the same normalized weights at every T (up to
eps): for them the temperature grid is flat by construction.

It is a study of the launcher too: ``attnlab study approx-error --preset quick`` reads the options
from ``configs/studies/approx-error/quick.yaml`` (one cell per kernel and temperature, or one per
captured model), and ``attnlab approx-error [options]`` builds the same preset from its options.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .approx_methods import (
    DEFAULT_METHODS,
    VALUE_AWARE,
    available_methods,
    compare_methods,
    current_method,
    hf_token_batch,
    load_hf_model,
    load_trained_model,
    method_output,
    oracle_attention,
    practical_methods,
    skip_reason,
    synthetic_qkv,
)
from .approx_report import plot_series, report
from .base import Cell, CellContext, Study, register_study

__all__ = ["STUDY", "VALUE_AWARE", "ApproxErrorPreset", "available_methods", "build_parser", "compare_methods",
           "hf_token_batch", "load_hf_model", "load_trained_model", "main", "method_output", "oracle_attention",
           "plot_series", "practical_methods", "run", "skip_reason", "synthetic_qkv"]


@dataclass(frozen=True)
class ApproxErrorPreset:
    """The options of ``attnlab approx-error`` (same names, ``-`` as ``_``), validated."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    rs: tuple[int, ...] = (1, 2, 4, 8, 16)
    kernels: tuple[str, ...] = ("softmax", "expressive", "squared", "relu")
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    batch: int = 1
    heads: int = 2
    length: int = 64
    head_dim: int = 16
    causal: bool = False
    checkpoint: str | None = None
    hf_model: str | None = None
    features_per_r: int = 4
    va_exact_max_subsets: int = 5000
    plot_temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        from ..kernels import available_kernels

        for name in ("rs", "temperatures"):
            if any(not x > 0 for x in getattr(self, name)):
                raise ValueError(f"--{name} must all be > 0, got {list(getattr(self, name))}")
        for name in ("batch", "heads", "length", "head_dim", "features_per_r", "va_exact_max_subsets"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if max(self.rs) > self.length:
            raise ValueError(f"--rs must be <= --length ({self.length}), got {max(self.rs)}")
        if self.checkpoint is not None and self.hf_model is not None:
            raise ValueError("--checkpoint and --hf-model: give at most one")
        if self.hf_model is not None:
            from .._argparse import check_hf_model

            check_hf_model(self.hf_model)
        bad = [k for k in self.kernels if k not in available_kernels()]
        if bad:
            raise ValueError(f"--kernels must be in {available_kernels()}, got {bad}")
        object.__setattr__(self, "methods", tuple(current_method(m) for m in self.methods))
        bad = [m for m in self.methods if m not in available_methods()]
        if bad:
            raise ValueError(f"--methods must be in {available_methods()}, got {bad}")


def _groups(args: Any, only: tuple[str, float] | None = None) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(source, kernel, condition, compare_methods inputs) for every problem the options ask for
    (synthetic: only the (kernel, temperature) ``only`` when given)."""
    from ..capture import capture_qkv
    from ..data.sources import make_source
    from ..models import mlm_mask

    groups = []
    if args.checkpoint is None and args.hf_model is None:
        q, k, v = synthetic_qkv(batch=args.batch, heads=args.heads, length=args.length, head_dim=args.head_dim,
                                seed=args.seed)
        for kernel in args.kernels:
            for t in args.temperatures:
                if only is not None and (kernel, t) != only:
                    continue
                groups.append(("synthetic", kernel, f"T={t:g}", dict(
                    q=q, k=k, v=v, kernel=kernel, is_causal=args.causal, scale=1 / (math.sqrt(args.head_dim) * t))))
        return groups
    if args.checkpoint is not None:
        model, cfg = load_trained_model(args.checkpoint)
        g = torch.Generator().manual_seed(args.seed)
        x, _, _ = make_source(cfg.data, cfg.model).next(args.batch, g, "validation")
        if cfg.model.kind == "masked":
            x = mlm_mask(x, mask_token_id=cfg.model.vocab_size, vocab_size=cfg.model.vocab_size, generator=g,
                         mask_prob=cfg.data.mask_prob)[0]
        source, eps, caps = f"checkpoint:{args.checkpoint}", cfg.model.attn_eps, capture_qkv(model, x)
    else:
        model = load_hf_model(args.hf_model)
        ids = hf_token_batch(args.hf_model, model.config.vocab_size, batch=args.batch, length=args.length,
                             seed=args.seed)
        source, eps, caps = f"hf:{args.hf_model}", 1e-6, capture_qkv(model, ids)
    for c in caps:
        groups.append((source, c.kernel, f"layer={c.layer}", dict(
            q=c.q, k=c.k, v=c.v, kernel=c.kernel, attn_mask=c.attn_mask, is_causal=c.is_causal, scale=c.scale,
            eps=eps)))
    return groups


def build_parser() -> argparse.ArgumentParser:
    """The ``attnlab approx-error`` options."""
    from .._argparse import ArgumentParser, first_paragraph

    ap = ArgumentParser(prog="attnlab approx-error", description=first_paragraph(__doc__))
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), type=current_method,
                    choices=available_methods())
    ap.add_argument("--rs", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="budgets r")
    ap.add_argument("--kernels", nargs="+", default=["softmax", "expressive", "squared", "relu"],
                    help="kernels (synthetic data; captured Q/K/V use the model's kernel)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--batch", type=int, default=1, help="sequences (synthetic: batch of Q/K/V)")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--length", type=int, default=64, help="tokens per sequence (synthetic and --hf-model)")
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--causal", action="store_true", help="synthetic data: causal attention")
    ap.add_argument("--checkpoint", help="an 'attnlab train' run folder: capture its Q/K/V on validation text")
    ap.add_argument("--hf-model", help="a local Hugging Face causal LM (folder or cached name; no download)")
    ap.add_argument("--features-per-r", type=int, default=4, help="performer: num_features = this * r")
    ap.add_argument("--va-exact-max-subsets", type=int, default=5000)
    ap.add_argument("--plot-temperature", type=float, default=1.0, help="synthetic: the temperature plotted")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports")
    return ap


def cells(p: ApproxErrorPreset) -> list[Cell]:
    """Synthetic data: one cell per (kernel, temperature); a model: one cell (every layer)."""
    fixed = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("plot_temperature", "kernels",
                                                                         "temperatures")}
    if p.checkpoint is None and p.hf_model is None:
        return [Cell(f"{kernel}/T={t:g}", {**fixed, "kernel": kernel, "temperature": t})
                for kernel in p.kernels for t in p.temperatures]
    return [Cell("model", {**fixed, "kernels": p.kernels})]


def run_cell(p: ApproxErrorPreset, cell: Cell, ctx: CellContext) -> dict[str, Any]:
    """The rows of :func:`compare_methods` for the cell's problems, computed on ``ctx.device``."""
    only = (cell.config["kernel"], cell.config["temperature"]) if "kernel" in cell.config else None
    rows = []
    for source, kernel, cond, inputs in _groups(p, only):
        inputs = {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        for row in compare_methods(methods=p.methods, rs=p.rs, features_per_r=p.features_per_r, seed=p.seed,
                                   va_exact_max_subsets=p.va_exact_max_subsets, **inputs):
            rows.append({"source": source, "kernel": kernel, "condition": cond, **row})
    return {"rows": rows}


def summarize(p: ApproxErrorPreset, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cell's rows, in the cells' order."""
    return [row for cell in cells(p) for row in results[cell.key]["rows"]]


STUDY = register_study(Study("approx-error", ApproxErrorPreset, cells, run_cell, summarize, report,
                             seeds=lambda p: [p.seed]))


def run(args: argparse.Namespace | ApproxErrorPreset, *, out: str | Path | None = None, device: str = "cpu",
        jobs: int | None = None) -> Path:
    """Run the comparison the parsed options (or a preset) describe through the launcher; returns
    the run folder (under ``out``, else ``args.out``, else ``reports``)."""
    from .launcher import run_study

    preset = args if isinstance(args, ApproxErrorPreset) else _preset(args)
    return run_study("approx-error", preset, out=out or getattr(args, "out", "reports"), device=device, jobs=jobs)


def _preset(args: argparse.Namespace) -> ApproxErrorPreset:
    names = {f.name for f in dataclasses.fields(ApproxErrorPreset)}
    return ApproxErrorPreset(**{k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
                                if k in names})


def main(argv: Sequence[str] | None = None) -> int:
    """``attnlab approx-error [options]``: the options become an :class:`ApproxErrorPreset` run
    by the launcher; returns an exit code (2 for bad options, one line, before any work)."""
    args = build_parser().parse_args(argv)
    try:
        preset = _preset(args)
    except ValueError as err:
        print(f"attnlab approx-error: error: {err}", file=sys.stderr)
        return 2
    print(run(preset, out=args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
