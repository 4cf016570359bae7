"""The measurements of ``attnlab approx-error`` (and of Study 1's layer probe): what each method
returns at budget r, when it does not apply, and the error rows of one attention problem; plus the
inputs: synthetic Q/K/V, attnlab checkpoints, local Hugging Face models and their token batches.
See :mod:`attnlab.studies.approx_error` for the methods' budgets.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..approx import (
    approximate_attention,
    available_approximations,
    available_oracles,
    get_oracle_record,
    get_record,
    oracle_attention,
)
from ..functional import attention
from ..methods import MethodRecord
from ..metrics import entropy, skewness, top_r_mass, value_aware_error, value_oblivious_error
from ..problem import AttentionProblem, build_problem, visibility

__all__ = ["DEFAULT_METHODS", "VALUE_AWARE", "available_methods", "compare_methods", "hf_token_batch",
           "load_hf_model", "load_trained_model", "method_output", "oracle_attention", "practical_methods",
           "skip_reason", "synthetic_qkv"]

VALUE_AWARE = ("va-greedy", "va-swap", "va-exact", "omp")
DEFAULT_METHODS = ("topr", "topr-l2", "va-greedy", "va-exact", "omp", "topk", "performer", "nystrom",
                   "elu-linear", "cosformer")


def practical_methods() -> list[str]:
    """The registered approximations (:func:`attnlab.approx.available_approximations`) less the
    deprecated aliases (a record whose doc starts with "deprecated"): registering one adds it."""
    return [n for n in available_approximations() if not get_record(n).doc.lower().startswith("deprecated")]


#: Methods approx-error still takes under their old name, with a FutureWarning (shown by default).
RENAMED_METHODS = {"linear": "elu-linear"}


def current_method(name: str) -> str:
    """``name``, or what it was renamed to (warning once per call that it is deprecated)."""
    if name in RENAMED_METHODS:
        warnings.warn(f"approx-error: method {name!r} is deprecated, use {RENAMED_METHODS[name]!r}",
                      FutureWarning, stacklevel=2)
        return RENAMED_METHODS[name]
    return name


def available_methods() -> list[str]:
    """Every method ``approx-error`` takes: the oracles, then the practical methods."""
    return available_oracles() + practical_methods()


def _record(method: str) -> MethodRecord:
    if method in available_oracles():
        return get_oracle_record(method)
    if method in practical_methods():
        return get_record(method)
    raise ValueError(f"method must be one of {available_methods()}, got {method!r}")


def _refusal(method: str, r: int, problem: AttentionProblem, *, va_exact_max_subsets: int) -> str | None:
    """Why ``method`` at budget ``r`` does not take ``problem``: its record's refusal, then its
    budget's range at r, then va-exact's size limit (None: it does)."""
    record = _record(method)
    reason = record.refusal(problem)
    if reason is not None:
        return reason
    budget = record.budget
    if budget is not None:
        high = budget.high(problem) if callable(budget.high) else budget.high
        if r < budget.low or (high is not None and r > high):
            return f"{method} needs {budget.low} <= r <= {high if high is not None else 'inf'}, got r={r}"
    S, D_v = problem.k.shape[-2], problem.v.shape[-1]
    if method == "va-exact" and math.comb(S, min(r, D_v + 1)) > va_exact_max_subsets:
        return f"va-exact infeasible: C({S}, {min(r, D_v + 1)}) > {va_exact_max_subsets} supports"
    return None


def skip_reason(method: str, r: int, *, kernel: str, is_causal: bool, masked: bool, L: int, S: int, D_v: int,
                va_exact_max_subsets: int = 5000) -> str | None:
    """Why ``method`` at budget ``r`` does not apply to a problem of these sizes (None: it does),
    asked of a float32 stand-in problem (a mask: one that hides a key from one query).

    Raises:
        ValueError: a method that is neither an oracle nor a practical method.
    """
    q, v = torch.zeros(1, 1, L, D_v), torch.zeros(1, 1, S, D_v)
    mask = torch.ones(L, S, dtype=torch.bool) if masked else None
    if mask is not None:
        mask[0, 0] = False
    problem = build_problem(q, v, v, kernel=kernel, is_causal=is_causal, attn_mask=mask)
    return _refusal(method, r, problem, va_exact_max_subsets=va_exact_max_subsets)


def method_output(method: str, r: int, q: Tensor, k: Tensor, v: Tensor, *, kernel: str = "softmax",
                  attn_mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                  eps: float = 1e-6, features_per_r: int = 4, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """The approximate output of ``method`` at budget ``r`` and its weights p_hat (oracles) or
    None (practical methods). A practical method gets the problem arguments and ``seed`` it takes,
    and its record's budget option set to r (``num_features``: ``features_per_r * r``).

    Raises:
        ValueError: a method that is neither an oracle nor a practical method.
    """
    record = _record(method)
    args: dict[str, Any] = dict(kernel=kernel, attn_mask=attn_mask, is_causal=is_causal, scale=scale, eps=eps,
                                enable_gqa=q.shape[-3] != k.shape[-3])
    if record.kind == "oracle":
        out, _, p_hat = oracle_attention(q, k, v, method=method, r=r, return_weights=True, **args)
        return out, p_hat
    params = inspect.signature(record.run).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options = {n: x for n, x in {**args, "seed": seed}.items() if takes_all or n in params}
    if "kernel" not in params:  # a method with its own kernel (elu-linear, cosformer) has no score scale
        options.pop("scale", None)
    if record.budget is not None:
        options[record.budget.option] = features_per_r * r if record.budget.option == "num_features" else r
    return approximate_attention(q, k, v, method=method, **options), None


def compare_methods(q: Tensor, k: Tensor, v: Tensor, *, kernel: str, methods: Sequence[str], rs: Sequence[int],
                    attn_mask: Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                    eps: float = 1e-6, features_per_r: int = 4, seed: int = 0,
                    va_exact_max_subsets: int = 5000, progress: Any = None) -> list[dict[str, Any]]:
    """One row per (method, r) with the errors and the statistics of p (see the module doc);
    methods that do not apply get a row with ``skipped`` set and no errors."""
    out, p = attention(q, k, v, kernel=kernel, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                       enable_gqa=q.shape[-3] != k.shape[-3], eps=eps, return_weights=True)
    L, S = p.shape[-2:]
    problem = build_problem(q, k, v, kernel=kernel, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                            enable_gqa=q.shape[-3] != k.shape[-3], eps=eps)
    vis = visibility(attn_mask, is_causal, L, S, p.device)
    stats = {"entropy": float(entropy(p, visible=vis).mean()), "skewness": float(skewness(p, visible=vis).mean())}
    rows = []
    for method in methods:
        for r in rs if _record(method).budget is not None else [min(rs)]:
            row: dict[str, Any] = {"method": method, "r": r, "value_aware_error": None,
                                   "value_oblivious_error": None}
            row["top_r_mass"] = float(top_r_mass(p, min(r, S), visible=vis).mean())
            row.update(stats)
            reason = _refusal(method, r, problem, va_exact_max_subsets=va_exact_max_subsets)
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


def load_local(auto_class: Any, name_or_path: str) -> Any:
    """``auto_class.from_pretrained(name_or_path)`` from local files only (no network), in eval
    mode, without the per-weight loading bar (it would interleave with the study's own progress
    bar; the setting is restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return auto_class.from_pretrained(name_or_path, local_files_only=True).eval()
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_hf_model(name_or_path: str) -> Any:
    """A Hugging Face causal LM from a local folder or the local cache (no network), in eval mode,
    with its attention dropout irrelevant (eval) and its implementation unchanged."""
    from transformers import AutoModelForCausalLM

    return load_local(AutoModelForCausalLM, name_or_path)


def hf_token_batch(name_or_path: str, vocab_size: int, *, batch: int, length: int, seed: int) -> Tensor:
    """(batch, length) token ids: random windows of the stdlib corpus' validation split, encoded by
    the model's own tokenizer when one is saved beside it, else as bytes modulo ``vocab_size``
    (a fallback for tokenizer-less test models, noted here because its loss means little)."""
    from ..data.corpus import load_corpus

    text = load_corpus("stdlib", split="validation", max_bytes=200_000)
    ids: list[int] = []
    try:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)(text, verbose=False)["input_ids"]
    except (OSError, ValueError, TypeError):
        pass
    if len(ids) <= length:  # no usable tokenizer saved (transformers may build an empty one)
        ids = list(text.encode("utf-8"))
    tokens = torch.as_tensor(ids, dtype=torch.long) % vocab_size
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - length, (batch,), generator=g)
    return torch.stack([tokens[s: s + length] for s in starts.tolist()])
