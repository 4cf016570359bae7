"""Synthetic autoregressive tasks with a complexity knob (the ladder of DESIGN.md section 3).

Every task is a pure function of ``(config, seed)``: :func:`sample` draws a :class:`TaskBatch`
from a local ``torch.Generator`` and never touches the global RNG. ``config.seed`` fixes the
*task instance* (a recurrence's coefficients and delays); the ``seed`` given to :func:`sample`
fixes the *data*, and ``split`` derives a distinct stream per split, so train and eval data of
one task instance come from different generators.

Batches use the next-token shift: ``targets[:, t]`` is the token to predict after reading
``inputs[:, : t + 1]``. ``predictable[:, t]`` is True where that target is a function of the
context and the task's fixed rule, so a perfect model scores 100% there; :func:`accuracy`
counts only those positions.

Tasks by name (:func:`get_task`, :func:`available_tasks`, :func:`task_config`):
``recurrence`` (:class:`RecurrenceConfig`), ``recall`` (:class:`RecallConfig`) and ``mixture``
(:class:`MixtureConfig`). Each config has ``vocab_size`` and ``seq_len`` properties.
"""

from __future__ import annotations

from ._base import (
    SPLITS,
    TaskBatch,
    TaskSpec,
    accuracy,
    available_tasks,
    check_overrides,
    get_task,
    register_task,
    sample,
    task_config,
    unregister_task,
)
from .mixture import MixtureConfig  # each task module registers its task on import
from .recall import RecallConfig
from .recurrence import RecurrenceConfig, recurrence_rule

__all__ = [
    "SPLITS",
    "MixtureConfig",
    "RecallConfig",
    "RecurrenceConfig",
    "TaskBatch",
    "TaskConfig",
    "TaskSpec",
    "accuracy",
    "available_tasks",
    "check_overrides",
    "get_task",
    "recurrence_rule",
    "register_task",
    "sample",
    "task_config",
    "unregister_task",
]

TaskConfig = RecurrenceConfig | RecallConfig | MixtureConfig
