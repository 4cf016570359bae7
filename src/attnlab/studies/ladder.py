"""Study 2: the complexity ladder, expressive attention (EA) vs dot-product attention (DPA).

Gros (arXiv 2407.18601) reports that at a fixed model size EA is at least as accurate as DPA on
autoregressive prediction tasks, that its margin grows with task complexity, and that EA reaches
100% accuracy at complexity levels DPA does not, also when several tasks are mixed. This study
trains the same small :class:`attnlab.models.CausalLM` (through :func:`attnlab.train.train` with
the ``task`` source) on every (task, level, kernel, seed) cell of a preset and checks the claims.

Per cell, ``seed`` fixes the weight init, the data stream and the task instance
(``task_seed = seed``), so the kernels of one seed see the same rule, data and init. Accuracy
counts the predictable positions only (:func:`attnlab.data.tasks.accuracy`):

- ``final_accuracy``: the trained model on ``final_eval_sequences`` fresh ``test``-split sequences;
- ``steps_to_100``: the first periodic evaluation (every ``eval_every`` steps, validation split)
  at 100% accuracy; empty when never reached.

A (task, level, kernel) is *solved* when the mean ``final_accuracy`` over seeds is
``>= solved_threshold`` (0.995 by default). Cells are cached in the run folder (weights as
safetensors checkpoints under ``cells/``, results in ``cells.jsonl``), so ``--resume RUN_DIR``
retrains nothing that finished.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._checks import check_int
from .report import RunDir, line_plot, markdown_table

__all__ = [
    "PRESETS", "LadderPreset", "cell_key", "get_preset", "get_preset_from", "main", "run", "summarize", "train_cell",
]

KERNELS = ("softmax", "expressive", "squared")
DPA, EA = "softmax", "expressive"
#: preset fields that change how cells are run, not what they compute.
EXECUTION_ONLY = ("workers", "threads")


@dataclass(frozen=True)
class LadderPreset:
    """What the study trains: tasks x levels x kernels x seeds, and how.

    Attributes:
        levels: task name -> ladder levels to train (see :func:`attnlab.data.tasks.task_config`).
        kernels: attention kernels compared (must include ``softmax`` and ``expressive``).
        n_seeds, seed: seeds ``seed, seed + 1, ..., seed + n_seeds - 1``.
        n_layers, d_model, n_heads: the fixed model size (context = the task's sequence length).
        steps, batch_size, lr, min_lr, warmup_steps: optimization (AdamW, cosine, no decay).
        eval_every, eval_batches: the periodic validation evaluation (for ``steps_to_100``).
        final_eval_sequences: test sequences for the final accuracy.
        solved_threshold: mean final accuracy at which a level counts as solved.
        tie_tolerance: "EA >= DPA" holds for a cell when EA's mean >= DPA's mean - tie_tolerance.
        workers: cells trained in parallel processes (1: in this process).
        threads: torch threads per worker (tiny models run faster on one thread each).
    """

    levels: dict[str, tuple[int, ...]]
    kernels: tuple[str, ...] = KERNELS
    n_seeds: int = 3
    seed: int = 0
    n_layers: int = 2
    d_model: int = 32
    n_heads: int = 2
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 20
    eval_every: int = 25
    eval_batches: int = 2
    final_eval_sequences: int = 256
    solved_threshold: float = 0.995
    tie_tolerance: float = 0.005
    workers: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        from ..data.tasks import available_tasks, get_task
        from ..kernels import available_kernels

        if not isinstance(self.levels, dict) or not self.levels:
            raise ValueError(f"levels must be a non-empty dict task -> levels, got {self.levels!r}")
        for task, levels in self.levels.items():
            if task not in available_tasks():
                raise ValueError(f"levels: task must be one of {available_tasks()}, got {task!r}")
            ladder = get_task(task).ladder
            if not levels or any(lv not in ladder for lv in levels) or len(set(levels)) != len(levels):
                raise ValueError(f"levels[{task!r}] must be distinct levels in {sorted(ladder)}, got {levels!r}")
        if any(k not in available_kernels() for k in self.kernels) or not {DPA, EA} <= set(self.kernels):
            raise ValueError(f"kernels must be names in {available_kernels()} including 'softmax' and "
                             f"'expressive', got {self.kernels!r}")
        for name in ("n_seeds", "n_layers", "d_model", "n_heads", "steps", "batch_size", "eval_every",
                     "eval_batches", "final_eval_sequences", "workers", "threads"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        if self.eval_every > self.steps:
            raise ValueError(f"eval_every must be <= steps ({self.steps}), got {self.eval_every}")
        if not 0 < self.solved_threshold <= 1:
            raise ValueError(f"solved_threshold must be in (0, 1], got {self.solved_threshold}")
        if not 0 <= self.tie_tolerance < 1:
            raise ValueError(f"tie_tolerance must be in [0, 1), got {self.tie_tolerance}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"lr must be > 0 and >= min_lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if (self.d_model // self.n_heads) % 2 or self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) / n_heads ({self.n_heads}) must be an even integer")

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.n_seeds))


PRESETS: dict[str, LadderPreset] = {
    # The end-to-end test: one level of two tasks, two seeds, a few dozen steps.
    "tiny": LadderPreset(levels={"recurrence": (1,), "mixture": (1,)}, n_seeds=2, d_model=16,
                         n_heads=2, steps=30, batch_size=16, eval_every=10, eval_batches=1,
                         final_eval_sequences=32),
    # `make demo` on a 2-core CPU (at most ~4.5 minutes): the two lowest rungs of every task.
    "quick": LadderPreset(levels={"recurrence": (1, 2), "recall": (1, 2), "mixture": (1, 2)}, steps=250,
                          workers=2),
    # The full grid, for a GPU: every rung of every task, 3 seeds, thousands of steps.
    "paper": LadderPreset(levels={t: (1, 2, 3, 4, 5, 6) for t in ("recurrence", "recall", "mixture")},
                          n_layers=2, d_model=64, n_heads=4, steps=5000, batch_size=64, lr=3e-3,
                          warmup_steps=100, eval_every=250, eval_batches=4, final_eval_sequences=1024),
}


def get_preset(name: str, **overrides: Any) -> LadderPreset:
    """The preset ``name`` (``tiny``, ``quick`` or ``paper``) with fields replaced by ``overrides``.

    Raises:
        ValueError: unknown preset name or field, or an invalid value (see :class:`LadderPreset`).
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return get_preset_from(PRESETS[name], overrides)


def get_preset_from(base: LadderPreset, overrides: dict[str, Any]) -> LadderPreset:
    """``base`` with fields replaced by ``overrides`` (validated again).

    Raises:
        ValueError: an unknown field or an invalid value.
    """
    fields = {f.name for f in dataclasses.fields(LadderPreset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"overrides must be fields of LadderPreset, got {unknown}")
    return dataclasses.replace(base, **overrides)


def cell_key(task: str, level: int, kernel: str, seed: int) -> str:
    """The cache key (and folder name under ``cells/``) of one training run."""
    return f"{task}-L{level}-{kernel}-s{seed}"


def _run_config(p: LadderPreset, task: str, level: int, kernel: str, seed: int, out_dir: Path):
    from ..config import DataConfig, RunConfig, TrainConfig
    from ..data.tasks import task_config
    from ..models import ModelConfig

    spec = task_config(task, level, seed=seed)
    model = ModelConfig(kind="causal", vocab_size=spec.vocab_size, context=spec.seq_len, n_layers=p.n_layers,
                        d_model=p.d_model, n_heads=p.n_heads, kernel=kernel, seed=seed)
    data = DataConfig(source="task", name=task, complexity=level, task_seed=seed)
    tc = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, min_lr=p.min_lr,
                     warmup_steps=p.warmup_steps, weight_decay=0.0, log_every=p.eval_every,
                     eval_every=p.eval_every, eval_batches=p.eval_batches, seed=seed, device="auto",
                     progress=False, out_dir=str(out_dir))
    return RunConfig(model=model, data=data, train=tc), spec


@torch.no_grad()
def _final_accuracy(model: torch.nn.Module, spec: Any, n: int, batch: int, seed: int) -> float:
    """Accuracy on the predictable positions of ``n`` test-split sequences."""
    from ..data.tasks import accuracy, sample

    b = sample(spec, n, seed, split="test")
    device = next(model.parameters()).device
    model.eval()
    preds = torch.cat([model(b.inputs[i:i + batch].to(device)).argmax(-1).cpu() for i in range(0, n, batch)])
    return accuracy(preds, b)


def train_cell(preset: LadderPreset, task: str, level: int, kernel: str, seed: int,
               root: str | Path) -> dict[str, Any]:
    """Train one cell with :func:`attnlab.train.train` into ``root/cells/<key>`` (continuing from
    its checkpoint if one is there) and return its results: final accuracy, the periodic
    validation curve, ``steps_to_100`` and wall time."""
    import json

    from ..checkpoints import find_checkpoint, load_trained_model
    from ..train import train

    out_dir = Path(root) / "cells" / cell_key(task, level, kernel, seed)
    cfg, spec = _run_config(preset, task, level, kernel, seed, out_dir)
    start = time.perf_counter()
    resume = find_checkpoint(out_dir) is not None  # else start over (a cell killed before its checkpoint)
    train(cfg, resume=resume, overwrite=not resume)
    model, _ = load_trained_model(out_dir)
    final = _final_accuracy(model, spec, preset.final_eval_sequences, preset.batch_size, seed)
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    curve = [[m["step"], m["loss"], m["eval_accuracy"]] for m in map(json.loads, lines) if "eval_accuracy" in m]
    to_100 = next((step for step, _, acc in curve if acc >= 1.0), None)
    return {"task": task, "level": level, "kernel": kernel, "seed": seed, "final_accuracy": final,
            "last_val_accuracy": curve[-1][2], "best_val_accuracy": max(acc for _, _, acc in curve),
            "last_train_loss": curve[-1][1], "steps_to_100": to_100, "steps": preset.steps,
            "n_params": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(time.perf_counter() - start, 3), "curve": curve}


def _worker_cell(args: tuple) -> dict[str, Any]:
    """Process-pool entry: set the thread count, then :func:`train_cell`."""
    torch.set_num_threads(args[0].threads)
    return train_cell(*args)


def _train_all(preset: LadderPreset, run_dir: RunDir) -> dict[str, dict[str, Any]]:
    """Every cell's result, training only those not cached in ``run_dir``."""
    from tqdm import tqdm

    todo, results = [], {}
    for task, levels in preset.levels.items():
        for level in levels:
            for kernel in preset.kernels:
                for seed in preset.seeds:
                    key = cell_key(task, level, kernel, seed)
                    cached = run_dir.cell(key)
                    if cached is None:
                        todo.append((key, (preset, task, level, kernel, seed, str(run_dir.path))))
                    else:
                        results[key] = cached
    bar = tqdm(total=len(todo) + len(results), initial=len(results), desc="ladder cells", dynamic_ncols=True)

    def record(key: str, result: dict[str, Any]) -> None:
        """Cache a finished cell, then drop its optimizer/RNG state (needed only to continue an
        unfinished cell; ~2x the weights): the weights stay for inspection."""
        results[key] = result
        run_dir.save_cell(key, result)
        for state in (run_dir.path / "cells" / key / "checkpoints").glob("step_*/state.pt"):
            state.unlink()
        bar.set_postfix_str(key)
        bar.update(1)

    if preset.workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(preset.threads)
        try:
            for key, args in todo:
                bar.set_postfix_str(key)
                record(key, train_cell(*args))
        finally:
            torch.set_num_threads(threads)
    elif todo:
        ctx = torch.multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(preset.workers, mp_context=ctx)
        try:
            futures = {pool.submit(_worker_cell, args): key for key, args in todo}
            for future in as_completed(futures):
                record(futures[future], future.result())
        finally:  # on an interruption, drop the queued cells instead of training them all first
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    return results


def _spread(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(preset: LadderPreset, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, level, kernel): mean / std / min of final accuracy over seeds, seeds at
    100%, median steps to 100% (over the seeds that got there) and ``solved``."""
    rows = []
    for task, levels in preset.levels.items():
        for level in levels:
            for kernel in preset.kernels:
                cells = [results[cell_key(task, level, kernel, s)] for s in preset.seeds]
                acc = [c["final_accuracy"] for c in cells]
                reached = [c["steps_to_100"] for c in cells if c["steps_to_100"] is not None]
                mean = statistics.fmean(acc)
                rows.append({"task": task, "level": level, "kernel": kernel, "mean_accuracy": mean,
                             "std_accuracy": _spread(acc), "min_accuracy": min(acc),
                             "seeds_at_100": sum(a >= 1.0 for a in acc), "n_seeds": len(acc),
                             "median_steps_to_100": statistics.median(reached) if reached else None,
                             "solved": mean >= preset.solved_threshold})
    return rows


def _claims(preset: LadderPreset, summary: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per task: margins, highest solved levels, and the verdicts on the three claims.

    margin(task, level) = mean_s acc(EA, s) - mean_s acc(DPA, s). "EA >= DPA" holds for a task
    when every margin is >= -tie_tolerance; "the margin grows" when the margins are
    non-decreasing along the levels (up to tie_tolerance), the last exceeds the first by more
    than tie_tolerance and EA is ahead at the highest level; "EA solves a level DPA does not"
    when some level is solved by EA only.
    """
    by = {(r["task"], r["level"], r["kernel"]): r for r in summary}
    rows, text = [], []
    for task, levels in preset.levels.items():
        levels = sorted(levels)
        margins = [by[task, lv, EA]["mean_accuracy"] - by[task, lv, DPA]["mean_accuracy"] for lv in levels]
        top = {k: max((lv for lv in levels if by[task, lv, k]["solved"]), default=None) for k in preset.kernels}
        at_least = all(m >= -preset.tie_tolerance for m in margins)
        worse = [f"L{lv} ({m:+.3f})" for lv, m in zip(levels, margins, strict=True) if m < -preset.tie_tolerance]
        if len(levels) < 2:
            grows = "not testable (one level)"
        elif margins[-1] <= preset.tie_tolerance:
            grows = "does not hold (EA is not ahead at the highest level)"
        elif all(b >= a - preset.tie_tolerance for a, b in itertools.pairwise(margins)) \
                and margins[-1] > margins[0] + preset.tie_tolerance:
            grows = "holds"
        else:
            grows = "does not hold"
        ea_only = [lv for lv in levels if by[task, lv, EA]["solved"] and not by[task, lv, DPA]["solved"]]
        dpa_only = [lv for lv in levels if by[task, lv, DPA]["solved"] and not by[task, lv, EA]["solved"]]
        for lv, m in zip(levels, margins, strict=True):
            rows.append({"task": task, "level": lv, "margin_ea_minus_dpa": m,
                         **{f"{k}_mean": by[task, lv, k]["mean_accuracy"] for k in preset.kernels}})
        solved = ", ".join(f"{k}: {'L' + str(v) if v else 'none'}" for k, v in top.items())
        text.append(
            f"- **{task}** — margins EA − DPA by level: "
            + ", ".join(f"L{lv} {m:+.3f}" for lv, m in zip(levels, margins, strict=True)) + ".\n"
            f"  - EA ≥ DPA (tolerance {preset.tie_tolerance}): "
            + ("**holds**." if at_least else f"**does not hold** at {', '.join(worse)}.") + "\n"
            f"  - margin grows with complexity: **{grows}**.\n"
            f"  - highest level solved (mean ≥ {preset.solved_threshold}): {solved}. EA solves a level DPA "
            f"does not: **{'holds' if ea_only else 'not observed'}**"
            + (f" (L{', L'.join(map(str, ea_only))})" if ea_only else "")
            + (f"; DPA solves levels EA does not: L{', L'.join(map(str, dpa_only))}" if dpa_only else "") + ".")
    return rows, text


def _overall(preset: LadderPreset, margins: list[dict[str, Any]]) -> str:
    """One sentence: in how many (task, level) cells EA >= DPA, and the mean margin."""
    ok = sum(m["margin_ea_minus_dpa"] >= -preset.tie_tolerance for m in margins)
    mean = statistics.fmean(m["margin_ea_minus_dpa"] for m in margins)
    return (f"Overall, EA is at least as accurate as DPA (within {preset.tie_tolerance}) in {ok} of "
            f"{len(margins)} (task, level) cells; mean margin EA − DPA {mean:+.3f}. These numbers come from "
            f"{preset.n_seeds} seeds of {preset.steps} steps each: a small budget, so read unsolved levels as "
            f"'not solved at this budget', not as a limit of the kernel.")


def _write_report(preset: LadderPreset, run_dir: RunDir, results: dict[str, dict[str, Any]],
                  seconds: float) -> None:
    cells = [{k: v for k, v in r.items() if k != "curve"} for r in results.values()]
    run_dir.write_csv("results.csv", cells)
    run_dir.write_csv("curves.csv", [{"task": r["task"], "level": r["level"], "kernel": r["kernel"],
                                      "seed": r["seed"], "step": s, "train_loss": loss, "val_accuracy": acc}
                                     for r in results.values() for s, loss, acc in r["curve"]])
    summary = summarize(preset, results)
    run_dir.write_csv("summary.csv", summary)
    margins, verdicts = _claims(preset, summary)
    run_dir.write_csv("claims.csv", margins)
    plots = []
    for task in preset.levels:
        rows = {k: [r for r in summary if r["task"] == task and r["kernel"] == k] for k in preset.kernels}
        path = line_plot(run_dir.path / f"accuracy_{task}.png",
                         {k: ([r["level"] for r in rs], [r["mean_accuracy"] for r in rs]) for k, rs in rows.items()},
                         errors={k: [r["std_accuracy"] for r in rs] for k, rs in rows.items()},
                         xlabel="complexity level", ylabel="final accuracy (predictable positions)",
                         title=f"{task}: mean ± std over {preset.n_seeds} seeds")
        if path is not None:
            plots.append(f"![accuracy vs complexity, {task}]({path.name})")
    cols = ["task", "level", "kernel", "mean_accuracy", "std_accuracy", "min_accuracy", "seeds_at_100",
            "median_steps_to_100", "solved"]
    env = run_dir.info["environment"]
    text = "\n\n".join([
        "# Complexity ladder: EA vs DPA (Gros, arXiv 2407.18601)",
        f"Model: CausalLM, {preset.n_layers} layers, d_model {preset.d_model}, {preset.n_heads} heads (same for "
        f"every kernel); {preset.steps} steps of batch {preset.batch_size}, lr {preset.lr}; "
        f"seeds {list(preset.seeds)}. "
        f"Accuracy on predictable positions of {preset.final_eval_sequences} test sequences. Solved = mean accuracy "
        f">= {preset.solved_threshold}. Device: {env.get('device')} ({env.get('cpu_count')} CPUs), wall time "
        f"{seconds:.0f} s in this session (cells summed: {sum(r['train_seconds'] for r in cells):.0f} s).",
        "## Claims\n\n" + _overall(preset, margins) + "\n\n" + "\n".join(verdicts),
        "## Accuracy by task, level and kernel\n\n"
        + markdown_table([{**r, "solved": "yes" if r["solved"] else "no"} for r in summary], cols, floatfmt=".3f"),
        "## Plots\n\n" + ("\n\n".join(plots) or "(matplotlib is not installed: no plots)"),
        "Every cell (task, level, kernel, seed) is in `results.csv`, every periodic evaluation in `curves.csv`, "
        "the per-level aggregates in `summary.csv` and the EA − DPA margins in `claims.csv`.",
    ])
    run_dir.write_text("report.md", text + "\n")


def run(preset: str | LadderPreset, out: str | Path = "reports", resume: str | Path | None = None,
        **overrides: Any) -> Path:
    """Run (or resume) the study and return its run folder.

    Args:
        preset: ``tiny``, ``quick``, ``paper`` or a :class:`LadderPreset`.
        out: where the run folder ``ladder-<timestamp>`` is created (ignored when resuming).
        resume: an earlier run folder: its cached cells are reused and the rest trained, with
            the preset recorded in its run.json.
        overrides: fields of the preset to replace (e.g. ``seed=3``, ``steps=500``); when
            resuming only ``workers`` and ``threads``, which do not change results.

    Raises:
        ValueError: an unknown preset or field, an invalid value, or a ``resume`` folder that is
            not a ladder run.
    """
    if resume is not None:
        run_dir = RunDir.open(resume)
        info = run_dir.info
        if info.get("study") != "ladder":
            raise ValueError(f"resume must be a ladder run folder, got one of study {info.get('study')!r}")
        stored = dict(info["config"])
        stored["levels"] = {t: tuple(lv) for t, lv in stored["levels"].items()}
        stored["kernels"] = tuple(stored["kernels"])
        changed = sorted(set(overrides) - set(EXECUTION_ONLY))
        if changed:
            raise ValueError(f"resume reuses the run's own preset; overrides may only set {list(EXECUTION_ONLY)}, "
                             f"got {changed}")
        p = get_preset_from(LadderPreset(**stored), overrides)
    else:
        p = preset if isinstance(preset, LadderPreset) else get_preset(preset, **overrides)
        run_dir = RunDir.create(out, "ladder", config=dataclasses.asdict(p), seeds=p.seeds)
    start = time.perf_counter()
    results = _train_all(p, run_dir)
    _write_report(p, run_dir, results, time.perf_counter() - start)
    return run_dir.path


def main(argv: list[str] | None = None) -> int:
    """``attnlab study ladder [--preset quick] [--out reports] [--resume RUN_DIR] [--seed N] ...``"""
    from .._argparse import ArgumentParser, first_paragraph

    parser = ArgumentParser(prog="attnlab study ladder", description=first_paragraph(__doc__))
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--out", default="reports", help="folder for the run folder")
    parser.add_argument("--resume", default=None, help="an earlier run folder to finish")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: the preset's)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument("--steps", type=int, default=None, help="training steps per cell")
    parser.add_argument("--workers", type=int, default=None, help="cells trained in parallel processes")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("seed", args.seed), ("n_seeds", args.seeds), ("steps", args.steps),
                                   ("workers", args.workers)) if v is not None}
    try:
        path = run(args.preset, args.out, resume=args.resume, **overrides)
    except (ValueError, TypeError) as err:
        print(f"attnlab study ladder: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
