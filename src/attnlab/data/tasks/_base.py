"""What every task of :mod:`attnlab.data.tasks` shares: the batch, the spec, the registry,
:func:`task_config`, :func:`sample` and :func:`accuracy`. One module per task registers itself."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..._checks import check_int
from ...registry import Registry

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskBatch:
    """A batch of a task: ``inputs``, ``targets`` (next-token shift) and the ``predictable`` mask.

    Attributes:
        inputs: LongTensor (B, L).
        targets: LongTensor (B, L); ``targets[:, t]`` follows ``inputs[:, : t + 1]``.
        predictable: BoolTensor (B, L); True where the target is determined by the context.
    """

    inputs: Tensor
    targets: Tensor
    predictable: Tensor


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its config class, sampler and complexity ladder (level -> knobs).

    ``sampler(config, n, generator) -> TaskBatch`` draws from ``generator`` only. ``build(knobs,
    seed, overrides)`` makes the config of a ladder level; None: ``config_class(**knobs,
    **overrides, seed=seed)`` after :func:`check_overrides` (a task whose config is not flat, like
    ``mixture``, builds its own).
    """

    name: str
    config_class: type
    sampler: Callable[..., TaskBatch]
    ladder: dict[int, dict[str, int]]
    build: Callable[[dict[str, int], int, dict[str, int]], Any] | None = None


_TASKS: Registry[TaskSpec] = Registry("task", entry="spec", entry_type=TaskSpec)


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Register ``spec`` under ``spec.name`` (for :func:`task_config`, :func:`sample` and the
    ``task`` data source) and return it.

    Raises:
        TypeError: ``spec`` is not a :class:`TaskSpec`, or its name is not a non-empty str.
        ValueError: the name is taken and ``overwrite`` is False, or the ladder is empty.
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"spec must be a TaskSpec, got {type(spec).__name__}")
    if not spec.ladder:
        raise ValueError(f"spec.ladder must hold at least one level, got {spec.ladder!r}")
    return _TASKS.register(spec.name, spec, overwrite=overwrite)


def unregister_task(name: str) -> TaskSpec:
    """Remove a registered task and return its spec.

    Raises:
        ValueError: ``name`` is not a registered task.
    """
    return _TASKS.unregister(name)


def available_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS.names())


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` registered under ``name``.

    Raises:
        ValueError: if ``name`` is not a registered task.
    """
    return _TASKS.get(name)


def task_config(name: str, complexity: int, seed: int = 0, **overrides: int) -> Any:
    """The config of task ``name`` at ladder level ``complexity`` (1 = easiest).

    ====  ======================  =====================  ===========================
    lvl   recurrence N, T, V, w   recall K, V (Q = K)    mixture tasks x recurrence
    ====  ======================  =====================  ===========================
    1     2, 2, 8, plain          2, 16                  2 x level 2
    2     2, 3, 8, plain          4, 32                  2 x level 3
    3     2, 4, 16, plain         8, 64                  3 x level 3
    4     3, 6, 16, plain         16, 128                3 x level 4
    5     3, 6, 16, weighted      32, 256                3 x level 5
    6     3, 8, 32, weighted      64, 512                4 x level 6
    7     4, 12, 32, weighted     -                      4 x level 7
    ====  ======================  =====================  ===========================

    ``recurrence`` levels 1-4 are plain delayed addition (all coefficients 1, Gros's "NT"
    tasks), 5-7 draw random unit coefficients (``weighted=1``); ``mixture`` mixes them (the
    paper's multi-task setting). ``recall`` (associative recall) is attnlab's own addition,
    not a task of the paper.
    Every knob is non-decreasing along the ladder and each level raises at least one. Sequence
    length: 64 for recurrence and mixture, ``4K - 1`` for recall. Mixture components are
    recurrences with distinct rules, the first found among seeds ``seed, seed + 1, ...``.
    ``overrides`` replace fields of the level's config (for a mixture, of each component),
    e.g. ``task_config("recurrence", 3, length=128)``.

    Raises:
        ValueError: unknown ``name``, a ``complexity`` off the ladder, or an unknown override.
    """
    spec = get_task(name)
    check_int("complexity", complexity, 1)
    if complexity not in spec.ladder:
        raise ValueError(f"complexity must be in 1..{max(spec.ladder)}, got {complexity}")
    knobs = spec.ladder[complexity]
    if spec.build is not None:
        return spec.build(knobs, seed, overrides)
    check_overrides(spec.config_class, overrides)
    return spec.config_class(**{**knobs, **overrides}, seed=seed)


def check_overrides(cls: type, overrides: dict[str, Any]) -> None:
    """Refuse an override of :func:`task_config` that is not a field of ``cls`` (or is ``seed``).

    Raises:
        ValueError: naming the override and ``cls``.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in fields or key == "seed":
            raise ValueError(f"overrides must be fields of {cls.__name__}, got {key!r}")


def sample(cfg: Any, n: int, seed: int, split: str = "train") -> TaskBatch:
    """Draw ``n`` sequences of task ``cfg``; a pure function of ``(cfg, n, seed, split)``.

    Raises:
        TypeError: if ``cfg`` is not a task config.
        ValueError: if ``n < 1``, ``seed < 0`` or ``split`` is not train/validation/test.
    """
    spec = next((s for s in _TASKS.values() if isinstance(cfg, s.config_class)), None)
    if spec is None:
        raise TypeError(f"cfg must be one of the task configs, got {type(cfg).__name__}")
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    g = torch.Generator().manual_seed(derive_seed("data", spec.name, seed, split))
    return spec.sampler(cfg, n, g)


def accuracy(logits_or_predictions: Tensor, batch: TaskBatch) -> float:
    """Fraction of predictable positions where the prediction equals the target.

    Args:
        logits_or_predictions: logits (B, L, V) (argmax taken) or integer predictions (B, L).
        batch: the :class:`TaskBatch` they predict.

    Raises:
        ValueError: if the shape does not match ``batch`` or no position is predictable.

    The count is :func:`attnlab.models.objectives.masked_accuracy`'s, as in training evaluation.
    """
    from ...models.objectives import masked_accuracy

    if not batch.predictable.any():
        raise ValueError("batch must have at least one predictable position")
    return masked_accuracy(logits_or_predictions, batch.targets, batch.predictable)


def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
