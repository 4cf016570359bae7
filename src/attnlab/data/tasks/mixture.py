"""The ``mixture`` task: several recurrences interleaved, each sequence opening with its task's token.

The multi-task setting of Gros (arXiv 2407.18601): one model learns several delayed-addition
rules at once and must tell from the context which one applies. Ladder (``num_tasks`` x
recurrence level): 1: 2 x 2, 2: 2 x 3, 3: 3 x 3, 4: 3 x 4 (all plain delayed addition),
5: 3 x 5, 6: 4 x 6, 7: 4 x 7 (weighted rules).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._base import TaskBatch, TaskSpec, check_overrides, register_task, task_config
from .recurrence import RecurrenceConfig, _run_recurrence, recurrence_rule

__all__ = ["MixtureConfig"]


@dataclass(frozen=True)
class MixtureConfig:
    """Several recurrences interleaved: each sequence opens with the token ``V + i`` of its task.

    Sequence ``i`` is ``[V + i, x_0, x_1, ...]`` with ``x`` from ``components[i]`` and
    ``V = max(c.vocab_size)``; which rule applies is read off the first token, so every target
    after the component's seeds is predictable. Example (two tasks, V=5, task 1 shown)::

        inputs       6 3 1 1 2 2 4 4
        targets      3 1 1 2 2 4 4 3
        predictable  . . T T T T T T

    Args:
        components: at least one :class:`RecurrenceConfig`, all with the same ``length``.
    """

    components: tuple[RecurrenceConfig, ...] = ()

    def __post_init__(self) -> None:
        comps = self.components
        if not isinstance(comps, tuple) or not comps:
            raise ValueError("components must be a non-empty tuple of RecurrenceConfig")
        if not all(isinstance(c, RecurrenceConfig) for c in comps):
            raise TypeError("components must contain only RecurrenceConfig instances")
        if len({c.length for c in comps}) != 1:
            raise ValueError(f"components must share one length, got {[c.length for c in comps]}")

    @property
    def vocab_size(self) -> int:
        return max(c.vocab_size for c in self.components) + len(self.components)

    @property
    def seq_len(self) -> int:
        return self.components[0].length


def _sample_mixture(cfg: MixtureConfig, n: int, g: torch.Generator) -> TaskBatch:
    base, length = max(c.vocab_size for c in cfg.components), cfg.seq_len
    task = torch.randint(0, len(cfg.components), (n,), generator=g)
    seq = torch.empty(n, length + 1, dtype=torch.long)
    pred = torch.zeros(n, length, dtype=torch.bool)
    seq[:, 0] = base + task
    for i, comp in enumerate(cfg.components):
        rows = (task == i).nonzero().flatten()
        seq[rows, 1:] = _run_recurrence(comp, len(rows), length, g)
        pred[rows] = torch.arange(length) >= comp.max_delay
    return TaskBatch(seq[:, :-1].clone(), seq[:, 1:].clone(), pred)


def _build_mixture(knobs: dict[str, int], seed: int, overrides: dict[str, int]) -> MixtureConfig:
    """``knobs["num_tasks"]`` recurrences of ``knobs["recurrence_level"]`` with distinct rules, the
    first found among seeds ``seed, seed + 1, ...``; ``overrides`` apply to each component."""
    check_overrides(RecurrenceConfig, overrides)
    comps: list[RecurrenceConfig] = []
    rules: set[tuple] = set()
    for candidate in range(seed, seed + 1000):
        if len(comps) == knobs["num_tasks"]:
            break
        comp = task_config("recurrence", knobs["recurrence_level"], candidate, **overrides)
        if recurrence_rule(comp) not in rules:
            rules.add(recurrence_rule(comp))
            comps.append(comp)
    if len(comps) < knobs["num_tasks"]:
        raise ValueError(f"overrides leave fewer than {knobs['num_tasks']} distinct rules")
    return MixtureConfig(tuple(comps))


register_task(TaskSpec("mixture", MixtureConfig, _sample_mixture, {
    # levels 1-4 mix plain delayed-addition rules (recurrence level 1 has a single rule, so
    # mixtures start at level 2, which has two); levels 5-7 mix weighted rules
    1: dict(num_tasks=2, recurrence_level=2),
    2: dict(num_tasks=2, recurrence_level=3),
    3: dict(num_tasks=3, recurrence_level=3),
    4: dict(num_tasks=3, recurrence_level=4),
    5: dict(num_tasks=3, recurrence_level=5),
    6: dict(num_tasks=4, recurrence_level=6),
    7: dict(num_tasks=4, recurrence_level=7),
}, build=_build_mixture))
