"""Training loop: ``attnlab train CONFIG.yaml [key=value ...] [--resume]``.

One YAML file holds three sections, each a dataclass that refuses unknown keys::

    model: {kind: causal, n_layers: 2, d_model: 64, n_heads: 4, kernel: expressive}
    data:  {source: corpus, name: stdlib, tokenizer: byte}
    train: {steps: 200, batch_size: 16, lr: 1e-3, out_dir: runs/tiny}

The loop: AdamW (no decay on biases and norms), learning rate ``lr * (t + 1) / warmup`` during
warmup then cosine decay to ``min_lr``, gradient clipping, bf16 autocast on CUDA only, optional
``torch.compile``. It writes ``run.json`` (config, seed, versions, hardware, git commit),
``metrics.jsonl`` (one line per log step) and atomic checkpoints (``model.safetensors`` +
``state.pt`` with optimizer, step and RNG states); ``--resume`` continues from the last one and
reproduces the uninterrupted run's losses exactly on the CPU. Under ``torchrun`` it trains data
parallel (gloo on CPU): every rank draws the same global batch and takes its slice, and the
loss is normalized by the global token count, so losses match a single process's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .data.sources import (
    BatchSource,
    CorpusSource,
    TaskSource,
    available_sources,
    fit_model_config,
    make_source,
    register_source,
)
from .io import atomic_write_text
from .models import ModelConfig, apply_overrides, build_model, from_dict, masked_cross_entropy, to_dict
from .models.config import check_field_types
from .models.objectives import mlm_mask

__all__ = [
    "BatchSource", "CorpusSource", "DataConfig", "RunConfig", "TaskSource", "TrainConfig",
    "available_sources", "evaluate", "fit_model_config", "load_config", "lr_at", "main",
    "make_source", "register_source", "train",
]


@dataclass
class DataConfig:
    """Where batches come from (the sources are in :mod:`attnlab.data.sources`).

    Attributes:
        source: a registered source: ``corpus`` (a text corpus, tokenized) or ``task`` (a
            synthetic task of :mod:`attnlab.data.tasks`).
        name: the corpus or task name.
        tokenizer: tokenizer of a corpus (``byte`` or ``bpe``).
        max_bytes: read at most this much of a corpus (None: all).
        complexity: ladder level of a task; task_seed fixes the task instance.
        mask_prob: masked LM only: fraction of positions masked (BERT: 0.15).
    """

    source: str = "corpus"
    name: str = "stdlib"
    tokenizer: str = "byte"
    max_bytes: int | None = None
    complexity: int = 1
    task_seed: int = 0
    mask_prob: float = 0.15

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.source not in available_sources():
            raise ValueError(f"source must be one of {available_sources()}, got {self.source!r}")
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")


@dataclass
class TrainConfig:
    """Optimization and bookkeeping. ``batch_size`` is global (split over data-parallel ranks);
    ``*_every = 0`` turns that action off (a checkpoint is always written at the end)."""

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 2
    ckpt_every: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    compile: bool = False
    progress: bool = True
    tensorboard: bool = False
    out_dir: str = "runs/default"

    def __post_init__(self) -> None:
        check_field_types(self)
        for key in ("steps", "batch_size", "log_every", "eval_batches", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "eval_every", "ckpt_every", "seed", "grad_clip", "weight_decay", "min_lr"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0 or self.min_lr > self.lr:
            raise ValueError(f"lr must be > 0 and >= min_lr ({self.min_lr}), got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.tensorboard:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ValueError("tensorboard=true needs the tensorboard package") from None


@dataclass
class RunConfig:
    """A full run: ``model``, ``data`` and ``train`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (or defaults when ``path`` is None) and apply ``key=value`` overrides.

    Raises:
        ValueError / TypeError: an unknown key, a value of the wrong type or an impossible
            shape, naming the dotted key (e.g. ``model.n_heads``).
    """
    import yaml

    data: Any = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return from_dict(RunConfig, apply_overrides(data, list(overrides)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) ``step``: linear warmup, then cosine from lr to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# --- run bookkeeping -------------------------------------------------------------------------


def _run_info(cfg: RunConfig, world: int, device: torch.device) -> dict[str, Any]:
    """What ``run.json`` records: config, seed, world size, device, versions, hardware, commit."""
    from .provenance import environment_info

    return {"config": to_dict(cfg), "seed": cfg.train.seed, "world_size": world, "device": str(device),
            "environment": environment_info(), "argv": sys.argv}


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    data_gen: torch.Generator, cfg: RunConfig, keep: int) -> Path:
    """Write ``checkpoints/step_XXXXXXXX/`` through a temporary directory and an atomic rename,
    then point ``checkpoints/latest`` at it; older checkpoints beyond ``keep`` are removed."""
    from safetensors.torch import save_file

    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    if not final.exists():  # the same step always holds the same state
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "config": to_dict(cfg),
                    "data_generator": data_gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "python_rng": random.getstate()}, tmp / "state.pt")
        os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    older = sorted(p for p in root.glob("step_*") if p != final)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    data_gen: torch.Generator, cfg: RunConfig) -> int:
    """Restore the latest checkpoint into model, optimizer, generator and RNGs; return its step.

    Raises:
        ValueError: no checkpoint in ``run_dir``, or one written for another model config.
    """
    from safetensors.torch import load_file

    latest = run_dir / "checkpoints" / "latest"
    if not latest.exists():
        raise ValueError(f"--resume: no checkpoint in {run_dir} (missing checkpoints/latest)")
    ckpt = run_dir / "checkpoints" / latest.read_text().strip()
    state = torch.load(ckpt / "state.pt", weights_only=True)
    if state["config"]["model"] != to_dict(cfg)["model"]:
        raise ValueError(f"--resume: the checkpoint in {ckpt} was written for another model config")
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    data_gen.set_state(state["data_generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    return int(state["step"])


# --- the loop --------------------------------------------------------------------------------


def _batch(source: BatchSource, model_cfg: ModelConfig, data_cfg: DataConfig, batch_size: int,
           gen: torch.Generator, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs, targets, loss_mask = source.next(batch_size, gen, split)
    if model_cfg.kind == "masked":  # the encoder reconstructs masked inputs
        inputs, targets, loss_mask = mlm_mask(inputs, mask_token_id=model_cfg.vocab_size,
                                              vocab_size=model_cfg.vocab_size, generator=gen,
                                              mask_prob=data_cfg.mask_prob)
    return inputs, targets, loss_mask


@torch.no_grad()
def evaluate(model: torch.nn.Module, source: BatchSource, cfg: RunConfig,
             device: torch.device) -> dict[str, float]:
    """Mean loss and accuracy on the selected positions of ``eval_batches`` validation batches
    (a fixed generator seeded by ``train.seed``, so every evaluation sees the same data)."""
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    loss_sum, correct, count = 0.0, 0, 0
    for _ in range(cfg.train.eval_batches):
        x, y, m = (t.to(device) for t in _batch(source, cfg.model, cfg.data, cfg.train.batch_size,
                                                  gen, "validation"))
        logits = model(x)
        loss_sum += float(masked_cross_entropy(logits, y, m, denominator=1))
        correct += int(((logits.argmax(-1) == y) & m).sum())
        count += int(m.sum())
    return {"eval_loss": loss_sum / max(count, 1), "eval_accuracy": correct / max(count, 1)}


def train(cfg: RunConfig, *, resume: bool = False, source: BatchSource | None = None) -> dict[str, Any]:
    """Train ``cfg``; returns the last logged metrics. ``source`` overrides ``cfg.data``.

    Raises:
        ValueError: before any work, for a batch size the ranks cannot split, a data source
            that does not fit the model, or ``resume`` without a checkpoint.
    """
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by the "
                         f"number of processes ({world})")
    source = make_source(cfg.data, cfg.model) if source is None else source
    cfg = dataclasses.replace(cfg, model=fit_model_config(cfg.model, source))  # caller's cfg untouched
    want_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if want_cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    run_dir, main_rank = Path(cfg.train.out_dir), rank == 0
    tc = cfg.train

    raw = build_model(cfg.model).to(device)
    decay = [p for n, p in raw.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in raw.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(tc.beta1, tc.beta2))
    gen = torch.Generator().manual_seed(tc.seed)
    start = load_checkpoint(run_dir, raw, opt, gen, cfg) if resume else 0
    model: torch.nn.Module = raw
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[local] if want_cuda else None)
    if tc.compile:
        model = torch.compile(model)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and tc.bf16
                else contextlib.nullcontext())

    metrics_path, writer = run_dir / "metrics.jsonl", None
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "run.json", json.dumps(_run_info(cfg, world, device), indent=2))
        old = metrics_path.read_text().splitlines() if resume and metrics_path.exists() else []
        atomic_write_text(metrics_path, "".join(f"{ln}\n" for ln in old if json.loads(ln)["step"] <= start))
        if tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tb"))
    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=start, disable=not (main_rank and tc.progress), dynamic_ncols=True)
    per_rank, last, t0, tokens = tc.batch_size // world, {}, time.perf_counter(), 0
    for step in range(start, tc.steps):
        lr = lr_at(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y, m = _batch(source, cfg.model, cfg.data, tc.batch_size, gen)
        count = m.sum().clamp_min(1)  # the global number of selected positions
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        x, y, m = x[sl].to(device), y[sl].to(device), m[sl].to(device)
        model.train()
        with autocast:
            logits = model(x)
        loss = masked_cross_entropy(logits, y, m, denominator=count.to(device)) * world
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
        opt.step()
        tokens += x.numel() * world
        report = loss.detach() / world
        if world > 1:
            dist.all_reduce(report)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps or (tc.eval_every and done % tc.eval_every == 0):
            elapsed = time.perf_counter() - t0
            last = {"step": done, "loss": float(report), "lr": lr, "grad_norm": float(grad_norm),
                    "tokens_per_s": tokens / max(elapsed, 1e-9)}
            if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                model.eval()
                last.update(evaluate(raw, source, cfg, device))
            t0, tokens = time.perf_counter(), 0
            if main_rank:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
                if writer is not None:
                    for k, v in last.items():
                        writer.add_scalar(k, v, done)
            bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
        bar.update(1)
        if (tc.ckpt_every and done % tc.ckpt_every == 0) or done == tc.steps:
            if main_rank:
                save_checkpoint(run_dir, done, raw, opt, gen, cfg, tc.keep_checkpoints)
            if world > 1:
                dist.barrier()
    bar.close()
    if writer is not None:
        writer.close()
    return last


def main(argv: list[str] | None = None) -> int:
    """``attnlab train CONFIG.yaml [section.key=value ...] [--resume]``; returns an exit code
    (2 for a config that does not load, reported before any work)."""
    parser = argparse.ArgumentParser(prog="attnlab train", description="Train an attnlab model.")
    parser.add_argument("config", help="YAML run config (sections model, data, train)")
    parser.add_argument("overrides", nargs="*", help="overrides such as model.n_layers=4 train.steps=100")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        fit_model_config(cfg.model, make_source(cfg.data, cfg.model))
        if args.resume and not (Path(cfg.train.out_dir) / "checkpoints" / "latest").exists():
            raise ValueError(f"--resume: no checkpoint in train.out_dir = {cfg.train.out_dir}")
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"attnlab train: error: {err}", file=sys.stderr)
        return 2
    train(cfg, resume=args.resume)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
