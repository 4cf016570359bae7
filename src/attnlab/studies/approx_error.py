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
| ``linear``, ``cosformer`` | none: their own kernels, one constant line | any (they approximate nothing) |

Performer's budget: F = r would match the work of an r-term weighted sum per query, but FAVOR+
with F < D features is mostly noise, so the default spends 4 r features (``--features-per-r``).

A query that sees fewer than r keys, or whose weights are all zero, is reproduced exactly by
keeping what it sees: :func:`attnlab.approx.oracle_attention` returns the exact output there (as ``topk``).

Synthetic data: q, k, v ~ N(0, 1) (B, H, L, D) from a seeded generator, scores
``s = q.k / (sqrt(D) T)``: temperature T < 1 sharpens the weights, T > 1 flattens them. The
homogeneous kernels (squared, relu, relu2) give the same normalized weights at every T (up to
eps): for them the temperature grid is flat by construction.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..approx.oracles import available_oracles, oracle_attention
from ..approx.registry import approximate_attention
from ..backends._common import visibility
from ..functional import attention
from ..metrics import entropy, skewness, top_r_mass, value_aware_error, value_oblivious_error

__all__ = ["PRACTICAL", "VALUE_AWARE", "build_parser", "compare_methods", "hf_token_batch", "load_hf_model",
           "load_trained_model", "main", "method_output", "oracle_attention", "plot_series", "run", "skip_reason",
           "synthetic_qkv"]

PRACTICAL = ("topk", "performer", "nystrom", "linear", "cosformer")
VALUE_AWARE = ("va-greedy", "va-swap", "va-exact", "omp")
DEFAULT_METHODS = ("topr", "topr-l2", "va-greedy", "va-exact", "omp", "topk", "performer", "nystrom",
                   "linear", "cosformer")


def skip_reason(method: str, r: int, *, kernel: str, is_causal: bool, masked: bool, L: int, S: int, D_v: int,
                va_exact_max_subsets: int = 5000) -> str | None:
    """Why ``method`` at budget ``r`` does not apply to this problem (None: it does)."""
    if method in ("performer", "nystrom") and kernel != "softmax":
        return f"{method} approximates softmax only"
    if method == "nystrom" and (is_causal or masked):
        return "nystrom is non-causal and takes no mask"
    if method == "nystrom" and r > min(L, S):
        return f"nystrom needs r <= min(L, S) = {min(L, S)}"
    if method == "va-exact" and math.comb(S, min(r, D_v + 1)) > va_exact_max_subsets:
        return f"va-exact infeasible: C({S}, {min(r, D_v + 1)}) > {va_exact_max_subsets} supports"
    return None


def method_output(method: str, r: int, q: Tensor, k: Tensor, v: Tensor, *, kernel: str = "softmax",
                  attn_mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                  eps: float = 1e-6, features_per_r: int = 4, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """The approximate output of ``method`` at budget ``r`` (see the module table) and its weights
    p_hat (oracles) or None (practical methods).

    Raises:
        ValueError: a method that is neither an oracle nor a practical method.
    """
    kw: dict[str, Any] = dict(attn_mask=attn_mask, is_causal=is_causal, enable_gqa=q.shape[-3] != k.shape[-3])
    if method in available_oracles():
        out, _, p_hat = oracle_attention(q, k, v, method=method, r=r, kernel=kernel, scale=scale, eps=eps,
                                         return_weights=True, **kw)
        return out, p_hat
    options: dict[str, Any] = {
        "topk": dict(top_k=r, kernel=kernel, scale=scale, eps=eps),
        "performer": dict(num_features=features_per_r * r, seed=seed, scale=scale, eps=eps),
        "nystrom": dict(num_landmarks=r, scale=scale),
        "linear": dict(eps=eps), "cosformer": dict(eps=eps),
    }.get(method)
    if options is None:
        raise ValueError(f"method must be one of {available_oracles() + list(PRACTICAL)}, got {method!r}")
    if method == "nystrom":
        kw.pop("attn_mask"), kw.pop("is_causal")
    return approximate_attention(q, k, v, method=method, **options, **kw), None


def compare_methods(q: Tensor, k: Tensor, v: Tensor, *, kernel: str, methods: Sequence[str], rs: Sequence[int],
                    attn_mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                    eps: float = 1e-6, features_per_r: int = 4, seed: int = 0,
                    va_exact_max_subsets: int = 5000, progress: Any = None) -> list[dict[str, Any]]:
    """One row per (method, r) with the errors and the statistics of p (see the module doc);
    methods that do not apply get a row with ``skipped`` set and no errors."""
    out, p = attention(q, k, v, kernel=kernel, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                       enable_gqa=q.shape[-3] != k.shape[-3], eps=eps, return_weights=True)
    L, S = p.shape[-2:]
    vis = visibility(attn_mask, is_causal, L, S, p.device)
    stats = {"entropy": float(entropy(p, visible=vis).mean()), "skewness": float(skewness(p, visible=vis).mean())}
    rows = []
    for method in methods:
        for r in rs if method not in ("linear", "cosformer") else [min(rs)]:
            row: dict[str, Any] = {"method": method, "r": r, "value_aware_error": None,
                                   "value_oblivious_error": None}
            row["top_r_mass"] = float(top_r_mass(p, min(r, S), visible=vis).mean())
            row.update(stats)
            reason = skip_reason(method, r, kernel=kernel, is_causal=is_causal, masked=attn_mask is not None,
                                 L=L, S=S, D_v=v.shape[-1], va_exact_max_subsets=va_exact_max_subsets)
            row["skipped"] = reason or ""
            if reason is None:
                o_hat, p_hat = method_output(method, r, q, k, v, kernel=kernel, attn_mask=attn_mask,
                                             is_causal=is_causal, scale=scale, eps=eps,
                                             features_per_r=features_per_r, seed=seed)
                row["value_aware_error"] = float(value_aware_error(out.double(), o_hat.double()))
                if p_hat is not None:
                    row["value_oblivious_error"] = float(value_oblivious_error(p.double(), p_hat.double()))
            rows.append(row)
            if progress is not None:
                progress.update(1)
    return rows


def synthetic_qkv(*, batch: int = 1, heads: int = 2, length: int = 64, head_dim: int = 16,
                  seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ~ N(0, 1), each (batch, heads, length, head_dim), from a seeded local generator."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, batch, heads, length, head_dim, generator=g).unbind(0)
    return q, k, v


def load_trained_model(path: str | Path) -> tuple[Any, Any]:
    """The model of an ``attnlab train`` run folder (its run.json and newest complete checkpoint,
    :func:`attnlab.checkpoints.load_trained_model`), in eval mode, and its
    :class:`attnlab.config.RunConfig`.

    Raises:
        ValueError: ``path`` holds no run.json or no checkpoint.
    """
    from ..checkpoints import load_trained_model as load

    try:
        return load(path)
    except ValueError as err:
        raise ValueError(f"checkpoint{str(err).removeprefix('run_dir')}") from None


def load_hf_model(name_or_path: str) -> Any:
    """A Hugging Face causal LM from a local folder or the local cache (no network), in eval mode,
    with its attention dropout irrelevant (eval) and its implementation unchanged."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name_or_path, local_files_only=True).eval()


def hf_token_batch(name_or_path: str, vocab_size: int, *, batch: int, length: int, seed: int) -> Tensor:
    """(batch, length) token ids: random windows of the stdlib corpus' validation split, encoded by
    the model's own tokenizer when one is saved beside it, else as bytes modulo ``vocab_size``
    (a fallback for tokenizer-less test models, noted here because its loss means little)."""
    from ..data.corpus import load_corpus

    text = load_corpus("stdlib", split="validation", max_bytes=200_000)
    ids: list[int] = []
    try:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)(text)["input_ids"]
    except (OSError, ValueError, TypeError):
        pass
    if len(ids) <= length:  # no usable tokenizer saved (transformers may build an empty one)
        ids = list(text.encode("utf-8"))
    tokens = torch.as_tensor(ids, dtype=torch.long) % vocab_size
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - length, (batch,), generator=g)
    return torch.stack([tokens[s: s + length] for s in starts.tolist()])


def _groups(args: argparse.Namespace) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(source, kernel, condition, compare_methods inputs) for every problem the options ask for."""
    from ..capture import capture_qkv
    from ..data.sources import make_source
    from ..models import mlm_mask

    groups = []
    if args.checkpoint is None and args.hf_model is None:
        q, k, v = synthetic_qkv(batch=args.batch, heads=args.heads, length=args.length, head_dim=args.head_dim,
                                seed=args.seed)
        for kernel in args.kernels:
            for t in args.temperatures:
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
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                    choices=available_oracles() + list(PRACTICAL))
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


def _check(args: argparse.Namespace) -> None:
    from ..kernels import available_kernels

    for name in ("rs", "temperatures"):
        if any(not x > 0 for x in getattr(args, name)):
            raise ValueError(f"--{name} must all be > 0, got {getattr(args, name)}")
    for name in ("batch", "heads", "length", "head_dim", "features_per_r", "va_exact_max_subsets"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if max(args.rs) > args.length:
        raise ValueError(f"--rs must be <= --length ({args.length}), got {max(args.rs)}")
    if args.checkpoint is not None and args.hf_model is not None:
        raise ValueError("--checkpoint and --hf-model: give at most one")
    if args.hf_model is not None:
        from .._argparse import check_hf_model

        check_hf_model(args.hf_model)
    bad = [k for k in args.kernels if k not in available_kernels()]
    if bad:
        raise ValueError(f"--kernels must be in {available_kernels()}, got {bad}")


def plot_series(rows: Sequence[dict[str, Any]], methods: Sequence[str], rs: Sequence[int]) -> tuple[
        dict[str, tuple[list[int], list[float]]], dict[str, str], dict[str, str], str]:
    """What one error-vs-r plot of ``rows`` (one problem's rows of :func:`compare_methods`) shows:
    (series, styles, notes, caption). Series: value-aware error over r per method that ran at
    some r (linear and cosformer, which have no budget: one constant line); styles: distinct per
    method (:func:`attnlab.studies.report.series_styles`, value-aware dashed); notes: where a
    method stops before the last r, and why (va-exact beyond its size limit); caption: the
    methods with no point at all, and why ("" when none). No series: no plot to draw."""
    from .report import series_styles

    series: dict[str, tuple[list[int], list[float]]] = {}
    notes: dict[str, str] = {}
    missing: dict[str, str] = {}
    for m in methods:
        mine = sorted((r for r in rows if r["method"] == m), key=lambda r: r["r"])
        pts = [(r["r"], r["value_aware_error"]) for r in mine if r["value_aware_error"] is not None]
        if not pts:
            if mine:
                missing[m] = next((r["skipped"] for r in mine if r.get("skipped")), "no result")
            continue
        if m in ("linear", "cosformer"):
            pts = [(x, pts[0][1]) for x in sorted(rs)]
        series[m] = ([x for x, _ in pts], [y for _, y in pts])
        after = [r for r in mine if r["r"] > pts[-1][0] and r.get("skipped")]
        if after:
            notes[m] = f"stops at r={pts[-1][0]}: {after[0]['skipped']}"
    styles = series_styles(list(series), dashed=[m for m in series if m in VALUE_AWARE])
    caption = ("not shown: " + "; ".join(f"{m} ({why})" for m, why in missing.items())) if missing else ""
    return series, styles, notes, caption


def run(args: argparse.Namespace) -> Path:
    """Run the comparison the parsed options describe; returns the run folder."""
    from tqdm import tqdm

    from .report import RunDir, line_plot, markdown_table

    groups = _groups(args)
    run_dir = RunDir.create(args.out, "approx-error", config=vars(args), seeds=[args.seed])
    per = sum(len(args.rs) if m not in ("linear", "cosformer") else 1 for m in args.methods)
    rows = []
    with tqdm(total=per * len(groups), desc="approx-error", dynamic_ncols=True) as bar:
        for source, kernel, cond, inputs in groups:
            for row in compare_methods(methods=args.methods, rs=args.rs, features_per_r=args.features_per_r,
                                       seed=args.seed, va_exact_max_subsets=args.va_exact_max_subsets,
                                       progress=bar, **inputs):
                rows.append({"source": source, "kernel": kernel, "condition": cond, **row})
    run_dir.write_csv("approx_error.csv", rows)
    cols = ["source", "kernel", "condition", "method", "r", "value_aware_error", "value_oblivious_error",
            "top_r_mass", "skewness", "skipped"]
    lines = ["# Approximation error", "", "Value-aware error = ||O - O_hat||_F / ||O||_F; value-oblivious "
             "error = mean_i ||p_i - p_hat_i||_1 (oracles only). In the plots each method has its own marker, "
             "value-aware methods are dashed, a method that stops is labelled where it stops, and the y axis is "
             "logarithmic where the errors span more than 1.5 decades.", ""]
    plot_cond = f"T={args.plot_temperature:g}"
    for source, kernel, cond in dict.fromkeys((r["source"], r["kernel"], r["condition"]) for r in rows):
        if source == "synthetic" and cond != plot_cond:
            continue
        sel = [r for r in rows if (r["source"], r["kernel"], r["condition"]) == (source, kernel, cond)]
        series, styles, notes, caption = plot_series(sel, args.methods, args.rs)
        if not series:  # never an empty plot: say why there is none
            why = f"No plot for {source} {kernel} {cond}: no method applies ({caption.removeprefix('not shown: ')})."
            print(why)
            lines += [why, ""]
            continue
        name = f"error-{kernel}-{cond.replace('=', '')}.png".replace("/", "_")
        if line_plot(run_dir.path / name, series, xlabel="r", ylabel="||O - O_hat|| / ||O||", logx=True,
                     styles=styles, title=f"{source} {kernel} {cond}", yscale="auto", notes=notes,
                     caption=caption) is not None:
            lines += [f"![{kernel} {cond}]({name})", ""]
            lines += [caption, ""] if caption else []
    lines += [markdown_table(rows, cols), ""]
    run_dir.write_text("report.md", "\n".join(lines))
    return run_dir.path


def main(argv: list[str] | None = None) -> int:
    """``attnlab approx-error [options]``; returns an exit code (2 for bad options, before any work)."""
    args = build_parser().parse_args(argv)
    try:
        _check(args)
    except ValueError as err:
        print(f"attnlab approx-error: error: {err}", file=sys.stderr)
        return 2
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
