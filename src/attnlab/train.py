"""Training loop: ``attnlab train CONFIG.yaml [key=value ...] [--resume | --overwrite]``.

One YAML file holds three sections, each a dataclass that refuses unknown keys::

    model: {kind: causal, n_layers: 2, d_model: 64, n_heads: 4, kernel: expressive}
    data:  {source: corpus, name: stdlib, tokenizer: byte}
    train: {steps: 200, batch_size: 16, lr: 1e-3, out_dir: runs/tiny}

The loop: AdamW (no decay on biases and norms), learning rate ``lr * (t + 1) / warmup`` during
warmup then cosine decay to ``min_lr``, gradient clipping, bf16 autocast on CUDA only, optional
``torch.compile``. It writes ``run.json`` (config, seed, versions, hardware, git commit),
``metrics.jsonl`` (one line per log step) and atomic checkpoints (``model.safetensors`` +
``state.pt`` with optimizer, step, RNG states and the config's hash; see
:mod:`attnlab.checkpoints`). Under ``torchrun`` it trains data parallel (gloo on CPU): every
rank draws the same global batch and takes its slice, and the loss is normalized by the global
token count, so losses match a single process's.

Run folders (``train.out_dir``): nothing lost, nothing stale.

- A new run refuses a non-empty ``out_dir``: continue it with ``--resume`` (``resume=True``), or
  delete it and start again with ``--overwrite`` (``overwrite=True``).
- ``--resume`` continues from the newest complete checkpoint (removing ``.tmp-*`` folders of
  a killed checkpoint write) and reproduces the uninterrupted run's losses exactly on the CPU. It
  refuses a checkpoint of another config: the model and data sections and the train fields
  other than steps, logging, evaluation, checkpointing, device and out_dir must match.
- The learning-rate schedule is fixed when a run starts: its warmup and cosine span the
  ``train.steps`` of the first launch. ``--resume`` with a larger ``train.steps`` continues that
  schedule (the rate stays at ``min_lr`` past its end) instead of restarting it; for a cosine
  over the longer run, start a new run. ``--resume`` with ``train.steps`` at or below the
  checkpoint's step does nothing and says so.
- SIGINT (Ctrl-C) or SIGTERM: the current step finishes, a checkpoint is written and
  :class:`TrainingInterrupted` is raised; ``attnlab train`` prints one line and exits 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .checkpoints import (
    check_resumable,
    find_checkpoint,
    is_run_folder,
    load_checkpoint,
    partial_checkpoints,
    read_state,
    save_checkpoint,
)
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
    "TrainingInterrupted", "available_sources", "evaluate", "fit_model_config", "load_config", "lr_at",
    "main", "make_source", "register_source", "train",
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

    def __post_init__(self) -> None:
        _check_backend(self.model)


def _check_backend(model: ModelConfig) -> None:
    """``model.backend`` must exist and compute ``model.kernel`` (else step 0 would fail)."""
    if model.backend == "auto":
        return
    from .backends import available_backends, get_backend
    from .kernels import get_kernel

    if model.backend not in available_backends():
        raise ValueError(f"model.backend must be 'auto' or one of {available_backends()}, got {model.backend!r}")
    kernel = get_kernel(model.kernel)
    if not get_backend(model.backend).supports(kernel):
        able = [name for name in available_backends() if get_backend(name).supports(kernel)]
        raise ValueError(f"model.backend {model.backend!r} does not support model.kernel {model.kernel!r}; "
                         f"use 'auto' or one of {able}")


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is 'cuda' but this torch ({torch.__version__}) sees no CUDA device "
                         "(torch.cuda.is_available() is False); use train.device=cpu or auto")


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (or defaults when ``path`` is None) and apply ``key=value`` overrides.

    Raises:
        ValueError / TypeError: a missing file or malformed YAML (names the file), an unknown
            key, a value of the wrong type, an impossible shape or a backend that cannot
            compute the kernel, naming the dotted key (e.g. ``model.n_heads``).
    """
    import yaml

    data: Any = {}
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return from_dict(RunConfig, apply_overrides(data, list(overrides)))


def lr_at(step: int, cfg: TrainConfig, schedule_steps: int | None = None) -> float:
    """Learning rate of (0-based) ``step``: linear warmup, then cosine from lr to min_lr over
    ``schedule_steps`` (default ``cfg.steps``; a resumed run keeps its first launch's), then min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, (cfg.steps if schedule_steps is None else schedule_steps) - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# --- run bookkeeping -------------------------------------------------------------------------


def _run_info(cfg: RunConfig, world: int, device: torch.device, plan: _Plan) -> dict[str, Any]:
    """What ``run.json`` records: config and its hash, seed, the learning-rate schedule's length,
    world size, device, versions, hardware, commit."""
    from .checkpoints import config_hash
    from .provenance import environment_info

    return {"config": to_dict(cfg), "config_hash": config_hash(cfg), "seed": cfg.train.seed,
            "schedule_steps": plan.schedule_steps, "resumed_from_step": plan.start, "world_size": world,
            "device": str(device), "environment": environment_info(), "argv": sys.argv}


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`train` after SIGINT or SIGTERM, once the current step has finished and
    its checkpoint is written. ``exit_code`` is the shell's: 128 + signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"{signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}")
        self.signum, self.step, self.checkpoint, self.exit_code = signum, step, checkpoint, 128 + signum


class _StopOnSignal:
    """While active (main thread only), SIGINT and SIGTERM set ``signum`` instead of stopping the
    process; a second one of the same signal acts as usual."""

    def __init__(self) -> None:
        self.signum, self._old = 0, {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class _Plan:
    """What :func:`_prepare` settled before any work: the fitted config and where to start."""

    cfg: RunConfig
    source: BatchSource
    device: torch.device
    checkpoint: Path | None  # resume from it
    start: int
    schedule_steps: int

    def done_message(self) -> str:
        return (f"the run in {self.cfg.train.out_dir} is already at step {self.start} >= train.steps "
                f"({self.cfg.train.steps}); nothing to do (raise train.steps=... to train further)")


def _prepare(cfg: RunConfig, resume: bool, overwrite: bool, source: BatchSource | None) -> _Plan:
    """Check the whole run before any work: config, device, data source, run folder, checkpoint.

    Raises:
        ValueError: anything that would fail later (see :func:`train`).
    """
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by the "
                         f"number of processes ({world})")
    _check_backend(cfg.model)
    _check_device(cfg.train.device)
    source = make_source(cfg.data, cfg.model) if source is None else source
    cfg = dataclasses.replace(cfg, model=fit_model_config(cfg.model, source))  # caller's cfg untouched
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
        return _Plan(cfg, source, device, ckpt, int(state["step"]), schedule)
    if rank == 0 and run_dir.is_dir() and any(run_dir.iterdir()):  # other ranks: rank 0 may be writing
        if not overwrite:
            raise ValueError(f"train.out_dir {run_dir} is not empty (an earlier run?); continue that run with "
                             "--resume, or delete it and start again with --overwrite, or choose another out_dir")
        if not is_run_folder(run_dir):
            raise ValueError(f"--overwrite: train.out_dir {run_dir} holds no run.json, metrics.jsonl or "
                             "checkpoints/, so it is not a run folder; refusing to delete it")
    return _Plan(cfg, source, device, None, 0, cfg.train.steps)


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


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
          source: BatchSource | None = None) -> dict[str, Any]:
    """Train ``cfg``; returns the last logged metrics. ``source`` overrides ``cfg.data``.

    ``resume`` continues from the newest complete checkpoint in ``cfg.train.out_dir``;
    ``overwrite`` deletes that run folder first. See the module docstring for the rules.

    Raises:
        ValueError: before any work, for a backend that cannot compute the kernel, a CUDA
            device torch cannot see, an unknown corpus or task, a batch size the ranks cannot
            split, a data source that does not fit the model, a non-empty ``out_dir`` without
            ``resume`` or ``overwrite``, or ``resume`` without a checkpoint of this config.
        TrainingInterrupted: after SIGINT/SIGTERM, once the step's checkpoint is written.
    """
    plan = _prepare(cfg, resume, overwrite, source)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    cfg, source, device, tc = plan.cfg, plan.source, plan.device, plan.cfg.train
    run_dir, main_rank, metrics_path = Path(tc.out_dir), rank == 0, Path(tc.out_dir) / "metrics.jsonl"
    if plan.start >= tc.steps:
        if main_rank:
            print(f"attnlab train: {plan.done_message()}", file=sys.stderr)
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        return json.loads(lines[-1]) if lines else {}
    if main_rank and overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    if main_rank and resume:
        partial = partial_checkpoints(run_dir)
        for tmp in partial:
            shutil.rmtree(tmp, ignore_errors=True)
        removed = f"; removed {len(partial)} partial checkpoint(s) of a killed write" if partial else ""
        print(f"attnlab train: resuming from {plan.checkpoint} (step {plan.start}){removed}", file=sys.stderr)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    raw = build_model(cfg.model).to(device)
    decay = [p for n, p in raw.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in raw.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(tc.beta1, tc.beta2))
    gen = torch.Generator().manual_seed(tc.seed)
    start = load_checkpoint(plan.checkpoint, raw, opt, gen) if plan.checkpoint is not None else 0
    model: torch.nn.Module = raw
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.index is not None
                                                          else None)
    if tc.compile:
        model = torch.compile(model)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and tc.bf16
                else contextlib.nullcontext())

    writer = None
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "run.json", json.dumps(_run_info(cfg, world, device, plan), indent=2))
        old = metrics_path.read_text().splitlines() if start and metrics_path.exists() else []
        atomic_write_text(metrics_path, "".join(f"{ln}\n" for ln in old if json.loads(ln)["step"] <= start))
        if tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tb"))
    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=start, disable=not (main_rank and tc.progress), dynamic_ncols=True)
    per_rank, last, t0, tokens = tc.batch_size // world, {}, time.perf_counter(), 0
    with _StopOnSignal() as stop, contextlib.ExitStack() as cleanup:
        cleanup.callback(bar.close)
        if writer is not None:
            cleanup.callback(writer.close)
        for step in range(start, tc.steps):
            lr = lr_at(step, tc, plan.schedule_steps)
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
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(),
                                                       tc.grad_clip if tc.grad_clip > 0 else math.inf)
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
            signum = stop.signum
            if world > 1:  # every rank stops after the same step
                flag = torch.tensor([signum], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                signum = int(flag)
            if (tc.ckpt_every and done % tc.ckpt_every == 0) or done == tc.steps or signum:
                if main_rank:
                    save_checkpoint(run_dir, done, raw, opt, gen, cfg, tc.keep_checkpoints, plan.schedule_steps)
                if world > 1:
                    dist.barrier()
            if signum and done < tc.steps:
                raise TrainingInterrupted(signum, done, run_dir / "checkpoints" / f"step_{done:08d}")
    return last


def _parser() -> argparse.ArgumentParser:
    from ._argparse import ArgumentParser

    parser = ArgumentParser(
        prog="attnlab train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an attnlab model; writes run.json, metrics.jsonl and checkpoints/ under train.out_dir.",
        epilog="""rules:
  A new run refuses a non-empty train.out_dir: continue it with --resume, or pass --overwrite to
  delete it and start again. --resume continues from the newest complete checkpoint (partial ones
  of a killed write are removed) and refuses one written for another config (model, data, or the
  train fields other than steps, logging, evaluation, checkpointing, device, out_dir).
  The learning-rate schedule (warmup, cosine to min_lr) spans the train.steps of the run's first
  launch: --resume with more train.steps continues it at min_lr instead of restarting it.
  Ctrl-C (SIGINT) or SIGTERM: the step finishes, a checkpoint is written, exit 130 / 143.""")
    parser.add_argument("config", help="YAML run config (sections model, data, train)")
    parser.add_argument("overrides", nargs="*", help="overrides such as model.n_layers=4 train.steps=100")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    group.add_argument("--overwrite", action="store_true",
                       help="delete train.out_dir (an earlier run's folder) and start a new run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``attnlab train CONFIG.yaml [section.key=value ...] [--resume | --overwrite]``; returns an
    exit code: 2 for a config or run folder that cannot work (reported before any work), 130 /
    143 after SIGINT / SIGTERM (a checkpoint is written first)."""
    args = _parser().parse_args(argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        try:
            cfg = load_config(args.config, args.overrides)
            plan = _prepare(cfg, args.resume, args.overwrite, None)
        except (ValueError, TypeError, OSError, ImportError) as err:
            print(f"attnlab train: error: {err}", file=sys.stderr)
            return 2
        if plan.start >= plan.cfg.train.steps:
            if main_rank:
                print(f"attnlab train: {plan.done_message()}")
            return 0
        try:
            train(cfg, resume=args.resume, overwrite=args.overwrite)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except TrainingInterrupted as stop:
        again = shlex.join(["attnlab", "train", args.config, *args.overrides, "--resume"])
        if main_rank:
            print(f"attnlab train: stopped by {signal.Signals(stop.signum).name} after step {stop.step}; "
                  f"checkpoint {stop.checkpoint}; continue with: {again}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("attnlab train: interrupted before the first step; nothing to resume", file=sys.stderr)
        return 130
    if main_rank:
        run_dir = Path(cfg.train.out_dir)
        print(f"attnlab train: done: checkpoint {find_checkpoint(run_dir)}, metrics {run_dir / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
