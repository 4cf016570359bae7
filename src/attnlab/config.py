"""Run configs: one YAML file, three strict sections (model, data, train), one loader.

::

    model: {kind: causal, n_layers: 2, d_model: 64, n_heads: 4, kernel: expressive}
    data:  {source: corpus, name: stdlib, tokenizer: byte}
    train: {steps: 200, batch_size: 16, lr: 1e-3, out_dir: runs/tiny}

Each section is a dataclass that refuses unknown keys and wrong types (:mod:`attnlab._strict`):
:class:`~attnlab.models.ModelConfig`, :class:`~attnlab.data.config.DataConfig` and
:class:`TrainConfig`, held by :class:`RunConfig`. :func:`load_config` is the one way to read a
run config from YAML and ``key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._strict import apply_overrides, check_field_types, from_dict, read_yaml_mapping
from .data.config import DataConfig
from .models.config import ModelConfig

__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "check_backend", "check_device",
           "check_run_fields", "load_config"]


@dataclass
class TrainConfig:
    """Optimization and bookkeeping. ``batch_size`` is global (split over data-parallel ranks);
    ``*_every = 0`` turns that action off (a checkpoint is always written at the end).

    Early stopping (both off by default; either needs ``eval_every > 0``; ``steps`` stays the
    cap): ``stop_at_accuracy`` stops once a periodic evaluation's accuracy is ``>=`` it (a float
    in (0, 1], or None); ``early_stop_patience = P > 0`` stops when P evaluations in a row have
    not raised the best accuracy so far (a plateau). ``device``: ``auto``, ``cpu``, ``cuda`` or
    ``cuda:N``.

    >>> TrainConfig(steps=2000, eval_every=50, stop_at_accuracy=1.0, early_stop_patience=8).device
    'auto'
    """

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
    early_stop_patience: int = 0
    stop_at_accuracy: float | None = None
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
        for key in ("warmup_steps", "eval_every", "ckpt_every", "seed", "grad_clip", "weight_decay", "min_lr",
                    "early_stop_patience"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0 or self.min_lr > self.lr:
            raise ValueError(f"lr must be > 0 and >= min_lr ({self.min_lr}), got {self.lr}")
        if self.stop_at_accuracy is not None and not 0 < self.stop_at_accuracy <= 1:
            raise ValueError(f"stop_at_accuracy must be in (0, 1] or null (off), got {self.stop_at_accuracy}")
        if (self.early_stop_patience or self.stop_at_accuracy is not None) and not self.eval_every:
            raise ValueError("early stopping (early_stop_patience > 0 or stop_at_accuracy) needs the periodic "
                             f"evaluation: eval_every must be > 0, got {self.eval_every}")
        if not _valid_device(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N >= 0), got {self.device!r}")
        if self.tensorboard:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ValueError("tensorboard=true needs the tensorboard package") from None


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit() and index.isascii() and str(int(index)) == index


@dataclass
class RunConfig:
    """A full run: ``model``, ``data`` and ``train`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_backend(self.model)


def check_run_fields(preset: Any, **derived: Any) -> None:
    """Check a study preset's model and training fields with the checks of the run configs its
    cells build: every field of :class:`ModelConfig` and of :class:`TrainConfig` that ``preset``
    has (``n_layers``, ``d_model``, ``steps``, ``lr``, ...), or that ``derived`` gives (what the
    study computes, e.g. ``min_lr=preset.lr / 10``), goes to that dataclass, which raises what
    it refuses (TypeError, ValueError: the field named as in the preset).
    """
    for section in (ModelConfig, TrainConfig):
        names = [f.name for f in dataclasses.fields(section)]
        section(**{n: getattr(preset, n) for n in names if hasattr(preset, n)},
                **{n: v for n, v in derived.items() if n in names})


def check_backend(model: ModelConfig) -> None:
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


def check_device(device: str) -> None:
    """Refuse ``train.device=cuda`` (or ``cuda:N``) where torch sees no CUDA device, and a
    ``cuda:N`` whose index is not one torch sees."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device is {device!r} but this torch ({torch.__version__}) sees no CUDA device "
                         "(torch.cuda.is_available() is False); use train.device=cpu or auto")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ValueError(f"train.device is {device!r} but torch sees {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (or defaults when ``path`` is None) and apply ``key=value`` overrides.

    Raises:
        ValueError / TypeError: a missing file or malformed YAML (names the file), an unknown
            key, a value of the wrong type, an impossible shape or a backend that cannot
            compute the kernel, naming the dotted key (e.g. ``model.n_heads``).
    """
    data: Any = {} if path is None else read_yaml_mapping(path)
    return from_dict(RunConfig, apply_overrides(data, list(overrides)))
