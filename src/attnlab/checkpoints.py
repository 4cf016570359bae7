"""Run folders of :mod:`attnlab.train` and their checkpoints: atomic, and tied to their config.

A run folder (``train.out_dir``) holds ``run.json``, ``metrics.jsonl`` and::

    checkpoints/step_00000500/{model.safetensors, state.pt}   one folder per checkpoint
    checkpoints/latest                                        the name of the newest one

A checkpoint is written into ``checkpoints/.tmp-*`` and renamed into place, so a ``step_*``
folder is always complete; a ``.tmp-*`` folder is a write that was killed (SIGKILL, power loss)
and is removed on ``--resume``. ``state.pt`` records the optimizer, the step, the RNG states, the
learning-rate schedule's length and :func:`config_hash` of the run, which ``--resume`` checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .io import atomic_write_text
from .models import to_dict

__all__ = ["RUN_LENGTH_FIELDS", "config_diff", "config_hash", "find_checkpoint", "is_run_folder",
           "load_checkpoint", "load_trained_model", "partial_checkpoints", "read_state", "run_identity",
           "save_checkpoint"]

# train fields that do not define the run: changing them keeps --resume possible (steps can be
# extended; logging, checkpointing, device and output folder are bookkeeping)
RUN_LENGTH_FIELDS = ("steps", "log_every", "eval_every", "eval_batches", "ckpt_every", "keep_checkpoints",
                     "device", "bf16", "compile", "progress", "tensorboard", "out_dir")
RUN_FILES = ("run.json", "metrics.jsonl", "checkpoints")
# train fields that define the run only when set: left out of the identity at these (off)
# values, so runs that do not use them keep the hash they had before the fields existed
OFF_BY_DEFAULT = {"early_stop_patience": 0, "stop_at_accuracy": None}


def run_identity(config: Any) -> dict[str, Any]:
    """The parts of a run config (a ``RunConfig`` or its dict) that define the run: the model
    and data sections and the train fields outside :data:`RUN_LENGTH_FIELDS`."""
    d = config if isinstance(config, dict) else to_dict(config)
    train = {k: v for k, v in d["train"].items()
             if k not in RUN_LENGTH_FIELDS and not (k in OFF_BY_DEFAULT and v == OFF_BY_DEFAULT[k])}
    return {"model": d["model"], "data": d["data"], "train": train}


def config_hash(config: Any) -> str:
    """sha256 (16 hex digits) of :func:`run_identity`: equal for the configs one run may resume under."""
    text = json.dumps(run_identity(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(old: Any, new: Any) -> list[str]:
    """The fields of :func:`run_identity` that differ, as ``"model.kernel: 'a' -> 'b'"``."""
    a, b = run_identity(old), run_identity(new)
    return [f"{section}.{key}: {a[section].get(key)!r} -> {b[section].get(key)!r}"
            for section in a for key in sorted(set(a[section]) | set(b[section]))
            if a[section].get(key) != b[section].get(key)]


def is_run_folder(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds what a training run writes (run.json, metrics or checkpoints)."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def partial_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint writes that never finished (``checkpoints/.tmp-*``)."""
    return sorted((run_dir / "checkpoints").glob(".tmp-*"))


def _complete(ckpt: Path) -> bool:
    return (ckpt / "model.safetensors").is_file() and (ckpt / "state.pt").is_file()


def find_checkpoint(run_dir: Path, *, weights_only: bool = False) -> Path | None:
    """The newest complete checkpoint of a run folder (None when there is none).

    ``step_*`` folders appear by an atomic rename, so the highest-numbered one is the newest
    complete checkpoint even when a crash came before ``latest`` was updated. ``weights_only``:
    a checkpoint whose ``state.pt`` was removed (finished study cells keep only the weights)
    counts too; it can be evaluated but not resumed."""
    found = sorted(p for p in (Path(run_dir) / "checkpoints").glob("step_*")
                   if (p / "model.safetensors").is_file() if weights_only or _complete(p))
    return found[-1] if found else None


def read_state(ckpt: Path) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint (optimizer, step, RNG states, config, config hash)."""
    return torch.load(ckpt / "state.pt", weights_only=True)


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    data_gen: torch.Generator, cfg: Any, keep: int, schedule_steps: int) -> Path:
    """Write ``checkpoints/step_XXXXXXXX/`` through a temporary folder and an atomic rename, point
    ``checkpoints/latest`` at it, and remove older checkpoints beyond ``keep`` and any of a
    later step (those belong to a continuation that was abandoned)."""
    from safetensors.torch import save_file

    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "config": to_dict(cfg),
                    "config_hash": config_hash(cfg), "schedule_steps": schedule_steps,
                    "data_generator": data_gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "python_rng": random.getstate()}, tmp / "state.pt")
        if final.exists():  # written by an abandoned continuation: replace, never keep
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "latest", final.name)
    others = sorted(p for p in root.glob("step_*") if p != final)
    older = [p for p in others if p.name < final.name]
    for old in [p for p in others if p.name > final.name] + older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def check_resumable(state: dict[str, Any], cfg: Any, ckpt: Path) -> None:
    """Refuse to resume ``cfg`` from a checkpoint written for another run.

    Raises:
        ValueError: the checkpoint's :func:`config_hash` differs from ``cfg``'s; names the
            section (model, data or train) and the fields that differ.
    """
    if state.get("config_hash", config_hash(state["config"])) == config_hash(cfg):
        return
    diff = config_diff(state["config"], cfg)
    section = diff[0].split(".")[0] if diff else "model"
    raise ValueError(f"--resume: the checkpoint in {ckpt} was written for another {section} config "
                     f"({'; '.join(diff) or 'config hash differs'}); resume with the run's config, or "
                     "start a new run with --overwrite or another train.out_dir")


def load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    data_gen: torch.Generator) -> int:
    """Restore a checkpoint into model, optimizer, generator and the global RNGs; return its step."""
    from safetensors.torch import load_file

    state = read_state(ckpt)
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    data_gen.set_state(state["data_generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    return int(state["step"])


def load_trained_model(run_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """The model of a run folder, built from its ``run.json`` config with the weights of its newest
    complete checkpoint (:func:`find_checkpoint`, ``weights_only``), in eval mode on the CPU, and
    its :class:`attnlab.config.RunConfig`. The one way studies and tools load a trained model.

    Raises:
        ValueError: ``run_dir`` holds no run.json or no checkpoint with weights.
    """
    from safetensors.torch import load_file

    from ._strict import from_dict
    from .config import RunConfig
    from .models import build_model

    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir, weights_only=True)
    if not (run_dir / "run.json").is_file() or ckpt is None:
        raise ValueError(f"run_dir must be an 'attnlab train' run folder with run.json and a complete "
                         f"checkpoint, got {str(run_dir)!r}")
    cfg = from_dict(RunConfig, json.loads((run_dir / "run.json").read_text())["config"])
    model = build_model(cfg.model)
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    return model.eval(), cfg
