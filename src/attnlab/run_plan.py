"""What a training run settles before any work, and how it stops: the run plan of :mod:`attnlab.train`.

:func:`prepare_run` checks the whole run (config, device, data source, run folder, checkpoint)
and returns a :class:`RunPlan`: the config with the model fitted to the data, the device, and
where to start (a fresh run, or the newest complete checkpoint for ``--resume``).
:func:`run_info` is what ``run.json`` records. :class:`StopOnSignal` turns SIGINT / SIGTERM into
a flag the loop reads after each step, and :class:`TrainingInterrupted` is raised once that
step's checkpoint is written.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoints import check_resumable, find_checkpoint, is_run_folder, partial_checkpoints, read_state
from .config import RunConfig, check_backend, check_device
from .data.sources import BatchSource, fit_model_config, make_source
from .models import to_dict

__all__ = ["RunPlan", "StopOnSignal", "TrainingInterrupted", "prepare_run", "run_info"]


def run_info(cfg: RunConfig, world: int, device: torch.device, plan: RunPlan) -> dict[str, Any]:
    """What ``run.json`` records: config and its hash, seed, the learning-rate schedule's length,
    world size, device, versions, hardware, commit."""
    from .checkpoints import config_hash
    from .provenance import environment_info

    return {"config": to_dict(cfg), "config_hash": config_hash(cfg), "seed": cfg.train.seed,
            "schedule_steps": plan.schedule_steps, "resumed_from_step": plan.start, "world_size": world,
            "device": str(device), "environment": environment_info(), "argv": sys.argv}


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`attnlab.train.train` after SIGINT or SIGTERM, once the current step has finished and
    its checkpoint is written. ``exit_code`` is the shell's: 128 + signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"{signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}")
        self.signum, self.step, self.checkpoint, self.exit_code = signum, step, checkpoint, 128 + signum


class StopOnSignal:
    """While active (main thread only), SIGINT and SIGTERM set ``signum`` instead of stopping the
    process; a second one of the same signal acts as usual."""

    def __init__(self) -> None:
        self.signum, self._old = 0, {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class RunPlan:
    """What :func:`prepare_run` settled before any work: the fitted config and where to start."""

    cfg: RunConfig
    source: BatchSource
    device: torch.device
    checkpoint: Path | None  # resume from it
    start: int
    schedule_steps: int

    def done_message(self) -> str:
        return (f"the run in {self.cfg.train.out_dir} is already at step {self.start} >= train.steps "
                f"({self.cfg.train.steps}); nothing to do (raise train.steps=... to train further)")


def prepare_run(cfg: RunConfig, resume: bool, overwrite: bool, source: BatchSource | None) -> RunPlan:
    """Check the whole run before any work: config, device, data source, run folder, checkpoint.

    Raises:
        ValueError: anything that would fail later (see :func:`attnlab.train.train`).
    """
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by the "
                         f"number of processes ({world})")
    check_backend(cfg.model)
    check_device(cfg.train.device)
    source = make_source(cfg.data, cfg.model) if source is None else source
    cfg = dataclasses.replace(cfg, model=fit_model_config(cfg.model, source))  # caller's cfg untouched
    if cfg.train.device.startswith("cuda:"):  # an explicit index: one process on that device
        if world > 1:
            raise ValueError(f"train.device {cfg.train.device!r} names one GPU but {world} processes run; "
                             "use train.device=cuda (each rank takes cuda:LOCAL_RANK)")
        device = torch.device(cfg.train.device)
    else:
        want_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
        device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if want_cuda else "cpu")
    run_dir = Path(cfg.train.out_dir)
    if resume:
        ckpt = find_checkpoint(run_dir)
        if ckpt is None:
            partial = partial_checkpoints(run_dir)
            note = (f" (only {len(partial)} partial one(s) of a killed write: {[p.name for p in partial]})"
                    if partial else "")
            again = "again with --overwrite" if run_dir.is_dir() and any(run_dir.iterdir()) else "without --resume"
            raise ValueError(f"--resume: no checkpoint in {run_dir}{note}; start the run {again}")
        state = read_state(ckpt)
        check_resumable(state, cfg, ckpt)
        schedule = int(state.get("schedule_steps", state["config"]["train"]["steps"]))
        return RunPlan(cfg, source, device, ckpt, int(state["step"]), schedule)
    if rank == 0 and run_dir.is_dir() and any(run_dir.iterdir()):  # other ranks: rank 0 may be writing
        if not overwrite:
            raise ValueError(f"train.out_dir {run_dir} is not empty (an earlier run?); continue that run with "
                             "--resume, or delete it and start again with --overwrite, or choose another out_dir")
        if not is_run_folder(run_dir):
            raise ValueError(f"--overwrite: train.out_dir {run_dir} holds no run.json, metrics.jsonl or "
                             "checkpoints/, so it is not a run folder; refusing to delete it")
    return RunPlan(cfg, source, device, None, 0, cfg.train.steps)
