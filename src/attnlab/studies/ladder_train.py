"""One cell of the complexity ladder (:mod:`attnlab.studies.ladder`): its run config, its
training through :func:`attnlab.train.train` into ``cells/<key>/``, and its results (final
accuracy on fresh test-split sequences, the validation curve, ``steps_to_solve``,
``steps_to_100``, ``steps_trained`` and why training ``stopped``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .ladder import LadderPreset

__all__ = ["cell_key", "train_cell"]


def cell_key(task: str, level: int, kernel: str, seed: int) -> str:
    """The cache key (and folder name under ``cells/``) of one training run."""
    return f"{task}-L{level}-{kernel}-s{seed}"


def _run_config(p: LadderPreset, task: str, level: int, kernel: str, seed: int, out_dir: Path, device: str = "cpu"):
    from ..config import DataConfig, RunConfig, TrainConfig
    from ..data.tasks import task_config
    from ..models import ModelConfig
    from .base import checkpoint_every

    spec = task_config(task, level, seed=seed)
    model = ModelConfig(kind="causal", vocab_size=spec.vocab_size, context=spec.seq_len, n_layers=p.n_layers,
                        d_model=p.d_model, n_heads=p.n_heads, kernel=kernel, seed=seed)
    data = DataConfig(source="task", name=task, complexity=level, task_seed=seed)
    tc = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, min_lr=p.min_lr,
                     warmup_steps=p.warmup_steps, weight_decay=0.0, log_every=p.eval_every,
                     eval_every=p.eval_every, eval_batches=p.eval_batches, seed=seed,
                     early_stop_patience=p.early_stop_patience, stop_at_accuracy=p.stop_at_accuracy,
                     ckpt_every=checkpoint_every(p.steps), device=device,
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
               root: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Train one cell with :func:`attnlab.train.train` on ``device`` into ``root/cells/<key>``
    (continuing from its checkpoint if one is there) and return its results: final accuracy, the
    periodic validation curve, wall time and

    - ``steps_trained``: the steps it trained (``preset.steps``, or fewer after an early stop);
    - ``stopped``: ``"target"`` (validation accuracy reached ``stop_at_accuracy``), ``"plateau"``
      (``early_stop_patience`` evaluations without a new best) or ``"cap"`` (all ``steps``);
    - ``steps_to_solve``: the first periodic evaluation with validation accuracy
      ``>= preset.solved_threshold`` (None if never); ``steps_to_100``: the same at 100%.
    """
    import json

    from ..checkpoints import find_checkpoint, load_trained_model
    from ..train import train

    out_dir = Path(root) / "cells" / cell_key(task, level, kernel, seed)
    cfg, spec = _run_config(preset, task, level, kernel, seed, out_dir, device)
    start = time.perf_counter()
    resume = find_checkpoint(out_dir) is not None  # else start over (a cell killed before its checkpoint)
    train(cfg, resume=resume, overwrite=not resume)
    model, _ = load_trained_model(out_dir)
    model = model.to(device)
    final = _final_accuracy(model, spec, preset.final_eval_sequences, preset.batch_size, seed)
    lines = [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [[m["step"], m["loss"], m["eval_accuracy"]] for m in lines if "eval_accuracy" in m]
    to_100 = next((step for step, _, acc in curve if acc >= 1.0), None)
    to_solve = next((step for step, _, acc in curve if acc >= preset.solved_threshold), None)
    stop = next((m for m in lines if "stopped" in m), None)
    return {"task": task, "level": level, "kernel": kernel, "seed": seed, "final_accuracy": final,
            "last_val_accuracy": curve[-1][2], "best_val_accuracy": max(acc for _, _, acc in curve),
            "last_train_loss": curve[-1][1], "steps_to_solve": to_solve, "steps_to_100": to_100,
            "steps_trained": max(m["step"] for m in lines), "stopped": stop["stopped"] if stop else "cap",
            "steps": preset.steps,
            "n_params": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(time.perf_counter() - start, 3), "curve": curve}
