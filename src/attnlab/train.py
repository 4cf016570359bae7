"""Training loop: ``attnlab train CONFIG.yaml [key=value ...] [--resume | --overwrite]``.

One YAML file holds three strict sections, ``model``, ``data`` and ``train`` (:mod:`attnlab.config`,
read by :func:`load_config`); :mod:`attnlab.run_plan` checks a run before any work.

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
- Early stopping (``train.stop_at_accuracy``, ``train.early_stop_patience``; off by default,
  ``train.steps`` stays the cap): after a periodic evaluation that meets the target accuracy,
  or after ``patience`` evaluations without a new best accuracy, the loop writes the step's
  checkpoint (the run's final one) and a ``metrics.jsonl`` line ``{"step", "stopped": "target" |
  "plateau", "stop_reason", "best_eval_accuracy", "best_step"}`` and ends. ``--resume`` of a run
  that stopped says so and trains no further. Both settings are part of the config hash when on.
- SIGINT (Ctrl-C) or SIGTERM: the current step finishes, a checkpoint is written and
  :class:`TrainingInterrupted` is raised; ``attnlab train`` prints one line and exits 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .checkpoints import find_checkpoint, load_checkpoint, partial_checkpoints, save_checkpoint
from .config import DataConfig, RunConfig, TrainConfig, load_config
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
from .models import ModelConfig, build_model, masked_cross_entropy
from .models.objectives import masked_accuracy, mlm_mask
from .run_plan import StopOnSignal, TrainingInterrupted, prepare_run, run_info

__all__ = [
    "BatchSource", "CorpusSource", "DataConfig", "RunConfig", "TaskSource", "TrainConfig",
    "TrainingInterrupted", "available_sources", "early_stop", "evaluate", "fit_model_config", "load_config",
    "lr_at", "main", "make_source", "register_source", "train",
]


def lr_at(step: int, cfg: TrainConfig, schedule_steps: int | None = None) -> float:
    """Learning rate of (0-based) ``step``: linear warmup, then cosine from lr to min_lr over
    ``schedule_steps`` (default ``cfg.steps``; a resumed run keeps its first launch's), then min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, (cfg.steps if schedule_steps is None else schedule_steps) - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def early_stop(tc: TrainConfig, evals: Sequence[tuple[int, float]]) -> tuple[str, str] | None:
    """Whether to stop after the latest of ``evals`` (``(step, eval_accuracy)`` in order):
    ``("target", why)``, ``("plateau", why)`` or None (also when early stopping is off).

    >>> tc = TrainConfig(eval_every=10, early_stop_patience=2)
    >>> early_stop(tc, [(10, 0.5), (20, 0.7), (30, 0.7)]) is None
    True
    >>> early_stop(tc, [(10, 0.5), (20, 0.7), (30, 0.7), (40, 0.6)])[0]
    'plateau'
    """
    if not evals:
        return None
    step, acc = evals[-1]
    if tc.stop_at_accuracy is not None and acc >= tc.stop_at_accuracy:
        return "target", f"eval_accuracy {acc:.4f} >= stop_at_accuracy {tc.stop_at_accuracy} at step {step}"
    if tc.early_stop_patience:
        best = max(range(len(evals)), key=lambda i: (evals[i][1], -i))  # the first best
        since = len(evals) - 1 - best
        if since >= tc.early_stop_patience:
            return "plateau", (f"no better eval_accuracy than {evals[best][1]:.4f} (step {evals[best][0]}) in "
                               f"{since} evaluations (early_stop_patience {tc.early_stop_patience}) at step {step}")
    return None


def _stop_line(evals: Sequence[tuple[int, float]], stop: tuple[str, str]) -> dict[str, Any]:
    best = max(range(len(evals)), key=lambda i: (evals[i][1], -i))
    return {"step": evals[-1][0], "stopped": stop[0], "stop_reason": stop[1],
            "best_eval_accuracy": evals[best][1], "best_step": evals[best][0]}


def _history(metrics_path: Path, start: int) -> tuple[list[tuple[int, float]], dict[str, Any] | None, dict]:
    """From the metrics of a resumed run: its evaluations up to ``start``, the early-stop line at
    ``start`` (None: it did not stop there) and the last logged line before it."""
    lines = [json.loads(ln) for ln in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    lines = [m for m in lines if m["step"] <= start]
    evals = [(m["step"], m["eval_accuracy"]) for m in lines if "eval_accuracy" in m]
    stopped = next((m for m in lines if "stopped" in m and m["step"] == start), None)
    logged = [m for m in lines if "stopped" not in m]
    return evals, stopped, logged[-1] if logged else {}


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
    loss_sum, preds, targets, masks = 0.0, [], [], []
    for _ in range(cfg.train.eval_batches):
        x, y, m = (t.to(device) for t in _batch(source, cfg.model, cfg.data, cfg.train.batch_size,
                                                  gen, "validation"))
        logits = model(x)
        loss_sum += float(masked_cross_entropy(logits, y, m, denominator=1))
        preds.append(logits.argmax(-1))
        targets.append(y)
        masks.append(m)
    mask = torch.cat(masks)
    count = int(mask.sum())
    accuracy = masked_accuracy(torch.cat(preds), torch.cat(targets), mask) if count else 0.0
    return {"eval_loss": loss_sum / max(count, 1), "eval_accuracy": accuracy}


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
    plan = prepare_run(cfg, resume, overwrite, source)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    cfg, source, device, tc = plan.cfg, plan.source, plan.device, plan.cfg.train
    run_dir, main_rank, metrics_path = Path(tc.out_dir), rank == 0, Path(tc.out_dir) / "metrics.jsonl"
    evals, stopped, last_logged = _history(metrics_path, plan.start) if plan.start else ([], None, {})
    if stopped is not None:
        if main_rank:
            print(f"attnlab train: the run in {tc.out_dir} stopped early at step {plan.start} ({stopped['stopped']}: "
                  f"{stopped['stop_reason']}); nothing to do (start a new run to train further)", file=sys.stderr)
        return {**last_logged, "stopped": stopped["stopped"], "stop_reason": stopped["stop_reason"]}
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
        atomic_write_text(run_dir / "run.json", json.dumps(run_info(cfg, world, device, plan), indent=2))
        old = metrics_path.read_text().splitlines() if start and metrics_path.exists() else []
        atomic_write_text(metrics_path, "".join(f"{ln}\n" for ln in old if json.loads(ln)["step"] <= start))
        if tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tb"))
    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=start, disable=not (main_rank and tc.progress), dynamic_ncols=True)
    per_rank, last, t0, tokens = tc.batch_size // world, {}, time.perf_counter(), 0
    halt: tuple[str, str] | None = None
    with StopOnSignal() as stop, contextlib.ExitStack() as cleanup:
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
                    evals.append((done, last["eval_accuracy"]))
                    halt = early_stop(tc, evals)
                    if world > 1:  # every rank stops after the same step
                        flag = torch.tensor([int(halt is not None)], device=device)
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                        if int(flag) and halt is None:
                            halt = ("target", f"another rank stopped at step {done}")
                t0, tokens = time.perf_counter(), 0
                if main_rank:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(last) + "\n")
                        if halt is not None:
                            f.write(json.dumps(_stop_line(evals, halt)) + "\n")
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
            if (tc.ckpt_every and done % tc.ckpt_every == 0) or done == tc.steps or signum or halt is not None:
                if main_rank:
                    save_checkpoint(run_dir, done, raw, opt, gen, cfg, tc.keep_checkpoints, plan.schedule_steps)
                if world > 1:
                    dist.barrier()
            if halt is not None:
                if main_rank:
                    print(f"attnlab train: stopped early at step {done} ({halt[0]}: {halt[1]})", file=sys.stderr)
                return {**last, "stopped": halt[0], "stop_reason": halt[1]}
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
    parser.add_argument("overrides", nargs="*", default=[], help="overrides such as model.n_layers=4 train.steps=100")
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
            plan = prepare_run(cfg, args.resume, args.overwrite, None)
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
