"""Study 2 (Gros, arXiv 2407.18601): the complexity ladder, expressive attention (EA) vs dot-product
attention (DPA).

Gros (arXiv 2407.18601) reports that at a fixed model size EA is at least as accurate as DPA on
autoregressive prediction tasks, that its margin grows with task complexity, and that EA reaches
100% accuracy at complexity levels DPA does not, also when several tasks are mixed. This study
trains the same small :class:`attnlab.models.CausalLM` (through :func:`attnlab.train.train` with
the ``task`` source) on every (task, level, kernel, seed) cell of a preset and checks the claims.

Per cell, ``seed`` fixes the weight init, the data stream and the task instance
(``task_seed = seed``), so the kernels of one seed see the same rule, data and init. Accuracy
counts the predictable positions only (:func:`attnlab.data.tasks.accuracy`):

- ``final_accuracy``: the trained model on ``final_eval_sequences`` fresh ``test``-split sequences;
- ``steps_to_solve``: the first periodic evaluation (every ``eval_every`` steps, validation
  split) with accuracy ``>= solved_threshold``; ``steps_to_100``: the same at 100%; empty when
  never reached.

A cell trains up to ``steps`` (the cap) and, with early stopping on, stops sooner: when the
validation accuracy reaches ``stop_at_accuracy`` (solved) or has not improved for
``early_stop_patience`` evaluations (a plateau), so "unsolved" means "stopped improving", not
"ran out of a short budget"; each result records ``steps_trained`` and why it ``stopped``.

The tasks: ``recurrence`` (delayed addition, Gros's "NT" tasks, then weighted rules) and
``mixture`` (several rules at once, the paper's multi-task setting) are the paper's and head the
report; ``recall`` (associative recall) is attnlab's own addition, reported after them, labelled.

A (task, level, kernel) is *solved* when the mean ``final_accuracy`` over seeds is
``>= solved_threshold`` (0.995 by default); a seed solves it when its own accuracy is. The
claims are tested in :mod:`attnlab.studies.ladder_claims` (paired by seed and task instance).
Presets are ``configs/studies/ladder/*.yaml``; the launcher (``attnlab study ladder``) keeps
each cell's weights under ``cells/<key>/`` and its result under ``results/``, so ``--resume
RUN_DIR`` retrains nothing that finished.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import check_int
from ..config import check_run_fields
from .base import EXECUTION_ONLY, Cell, CellContext, PresetTable, Study, preset_from, register_study
from .ladder_train import cell_key, train_cell
from .report import RunDir

__all__ = [
    "PRESETS", "STUDY", "LadderPreset", "cell_key", "get_preset", "get_preset_from", "main", "run", "summarize",
    "train_cell",
]

KERNELS = ("softmax", "expressive", "squared")
DPA, EA = "softmax", "expressive"
#: preset fields that choose the grid (cells), not what one cell computes
GRID = ("levels", "kernels", "n_seeds", "seed", "solved_threshold", "tie_tolerance")


@dataclass(frozen=True)
class LadderPreset:
    """What the study trains: tasks x levels x kernels x seeds, and how.

    Attributes:
        levels: task name -> ladder levels to train (see :func:`attnlab.data.tasks.task_config`).
        kernels: attention kernels compared (must include ``softmax`` and ``expressive``).
        n_seeds, seed: seeds ``seed, seed + 1, ..., seed + n_seeds - 1``.
        n_layers, d_model, n_heads: the fixed model size (context = the task's sequence length).
        steps, batch_size, lr, min_lr, warmup_steps: optimization (AdamW, cosine, no decay).
        eval_every, eval_batches: the periodic validation evaluation (for ``steps_to_solve``).
        early_stop_patience: stop a cell after this many evaluations without a better
            validation accuracy (0: off). stop_at_accuracy: stop a cell once its validation
            accuracy is ``>=`` this (None: off); ``steps`` stays the cap.
        final_eval_sequences: test sequences for the final accuracy.
        solved_threshold: final accuracy at which a seed (or a seed mean) counts as solved.
        tie_tolerance: the non-inferiority margin of "EA >= DPA", in accuracy (stated in the
            preset before running: EA >= DPA - tie_tolerance).
        jobs: cells trained in parallel processes (1: in this process); ``--jobs`` overrides it.
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
    early_stop_patience: int = 0
    stop_at_accuracy: float | None = None
    final_eval_sequences: int = 256
    solved_threshold: float = 0.995
    tie_tolerance: float = 0.005
    jobs: int = 1
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
        for name in ("n_seeds", "eval_every", "final_eval_sequences", "jobs", "threads"):
            check_int(name, getattr(self, name), 1)
        check_run_fields(self)  # model size and optimization: the RunConfig sections' own checks
        if self.eval_every > self.steps:
            raise ValueError(f"eval_every must be <= steps ({self.steps}), got {self.eval_every}")
        if not 0 < self.solved_threshold <= 1:
            raise ValueError(f"solved_threshold must be in (0, 1], got {self.solved_threshold}")
        if not 0 <= self.tie_tolerance < 1:
            raise ValueError(f"tie_tolerance must be in [0, 1), got {self.tie_tolerance}")

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.n_seeds))


PRESETS: Mapping[str, LadderPreset] = PresetTable("ladder")


def get_preset(name: str, **overrides: Any) -> LadderPreset:
    """The preset ``name`` (``configs/studies/ladder/<name>.yaml``: tiny, quick, paper) with fields
    replaced by ``overrides``.

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
    return preset_from(LadderPreset, {**dataclasses.asdict(base), **overrides})


def cells(preset: LadderPreset) -> list[Cell]:
    """One cell per (task, level, kernel, seed); its config: the training fields and the coordinates."""
    fixed = {k: v for k, v in dataclasses.asdict(preset).items() if k not in GRID + EXECUTION_ONLY}
    return [Cell(cell_key(task, level, kernel, seed), {**fixed, "task": task, "level": level, "kernel": kernel,
                                                        "seed": seed})
            for task, levels in preset.levels.items() for level in levels for kernel in preset.kernels
            for seed in preset.seeds]


def run_cell(preset: LadderPreset, cell: Cell, ctx: CellContext) -> dict[str, Any]:
    """:func:`train_cell` (checkpointing every tenth of its steps, so a killed cell resumes where it
    was), then keep only the final weights for inspection: the older checkpoints and the
    optimizer/RNG state (needed only to continue an unfinished cell; ~2x the weights) go."""
    import shutil

    c = cell.config
    result = train_cell(preset, c["task"], c["level"], c["kernel"], c["seed"], ctx.run_path, device=ctx.device)
    steps = sorted((ctx.run_path / "cells" / cell.key / "checkpoints").glob("step_*"))
    for folder in steps[:-1]:
        shutil.rmtree(folder)
    for folder in steps[-1:]:
        (folder / "state.pt").unlink(missing_ok=True)
    return result


def summarize(preset: LadderPreset, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, level, kernel): mean / std / min of final accuracy over seeds with the
    mean's 95% CI (bootstrap over seeds, t-stretched; none for one seed), seeds at 100%, median
    steps to solve and to 100% (over the seeds that got there), median steps trained, seeds
    stopped early, and ``solved``."""
    from ..stats import paired_bootstrap

    rows = []
    for task, levels in preset.levels.items():
        for level in levels:
            for kernel in preset.kernels:
                cells = [results[cell_key(task, level, kernel, s)] for s in preset.seeds]
                acc = [c["final_accuracy"] for c in cells]
                reached = [c["steps_to_100"] for c in cells if c["steps_to_100"] is not None]
                solved_at = [c["steps_to_solve"] for c in cells if c.get("steps_to_solve") is not None]
                trained = [c.get("steps_trained", c.get("steps")) for c in cells]
                mean = statistics.fmean(acc)
                ci = paired_bootstrap(acc, seed=0, unit="seeds") if len(acc) > 1 and max(acc) > min(acc) else None
                rows.append({"task": task, "level": level, "kernel": kernel, "mean_accuracy": mean,  # CI within [0, 1]
                             "ci_low": max(0.0, ci.ci_low) if ci else mean,
                             "ci_high": min(1.0, ci.ci_high) if ci else mean,
                             "std_accuracy": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                             "min_accuracy": min(acc), "seeds_at_100": sum(a >= 1.0 for a in acc),
                             "n_seeds": len(acc),
                             "median_steps_to_solve": statistics.median(solved_at) if solved_at else None,
                             "seeds_solved_in_training": len(solved_at),
                             "median_steps_to_100": statistics.median(reached) if reached else None,
                             "median_steps_trained": (statistics.median(trained)
                                                      if None not in trained else None),
                             "seeds_stopped_early": sum(c.get("stopped") in ("target", "plateau") for c in cells),
                             "solved": mean >= preset.solved_threshold})
    return rows


def report(preset: LadderPreset, run_dir: RunDir, results: dict[str, Any], summary: list[dict[str, Any]],
           info: dict[str, Any]) -> None:
    from .ladder_claims import write_report

    write_report(preset, run_dir, results, summary, info)


STUDY = register_study(Study("ladder", LadderPreset, cells, run_cell, summarize, report,
                             seeds=lambda p: list(p.seeds), options=lambda ap: _options(ap)))


def _options(ap: Any) -> None:
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: the preset's)")
    ap.add_argument("--seeds", dest="n_seeds", type=int, default=None, help="number of seeds")
    ap.add_argument("--steps", type=int, default=None, help="training steps per cell")


def run(preset: str | LadderPreset, out: str | Path = "reports", resume: str | Path | None = None, *,
        device: str = "cpu", jobs: int | None = None, **overrides: Any) -> Path:
    """Run (or resume) the study through the launcher (:func:`attnlab.studies.launcher.run_study`)
    and return its run folder.

    Args:
        preset: ``tiny``, ``quick``, ``paper`` (``configs/studies/ladder/``) or a :class:`LadderPreset`.
        out: where the run folder ``ladder-<timestamp>`` is created (ignored when resuming).
        resume: an earlier run folder: its cached cells are reused and the rest trained, with
            the preset recorded in its run.json.
        device: ``cpu``, ``cuda`` or ``cuda:N``. jobs: worker processes (default: the preset's).
        overrides: fields of the preset to replace (e.g. ``seed=3``, ``steps=500``); when
            resuming only ``jobs`` and ``threads``, which do not change results.

    Raises:
        ValueError: an unknown preset or field, an invalid value, or a ``resume`` folder that is
            not a ladder run.
    """
    from .launcher import run_study

    if isinstance(preset, str) and resume is None:
        get_preset(preset)  # the message names the presets
    return run_study("ladder", preset, out=out, resume=resume, device=device, jobs=jobs, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    """``attnlab study ladder [--preset quick] [--out reports] [--resume RUN_DIR] [--device D]
    [--jobs N] [--seed N] [--seeds N] [--steps N]``"""
    from .launcher import main as launch

    return launch("ladder", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
