"""The ``recurrence`` task: ``x_t = (sum_j c_j x_{t - tau_j}) mod V`` with a rule fixed per instance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..._checks import check_int
from ._base import TaskBatch, TaskSpec, derive_seed, register_task

__all__ = ["RecurrenceConfig", "recurrence_rule"]


@dataclass(frozen=True)
class RecurrenceConfig:
    """``x_t = (sum_{j<N} c_j * x_{t - tau_j}) mod V``, one fixed rule per task instance.

    The rule (coefficients ``c_j`` coprime to ``V`` and ``N`` distinct delays in ``1..T`` whose
    largest is exactly ``T``) is drawn from ``seed`` (:func:`recurrence_rule`), so the model
    must infer it from training data, as in Gros (2024). The first ``T`` tokens of each sequence
    are uniform random seeds and are masked out; every later target is predictable. As
    ``c_T`` is a unit mod ``V`` the state map is a bijection: sequences never collapse to a
    constant and every ``x_t`` stays uniform on ``0..V-1``, so guessing scores about ``1/V``.
    Example (N=1, T=2, V=5, c=(2,), tau=(2,): x_t = 2 x_{t-2} mod 5)::

        inputs       3 1 1 2 2 4 4 3
        targets      1 1 2 2 4 4 3 3
        predictable  . T T T T T T T

    Args:
        num_terms: N >= 1. max_delay: T >= N. vocab_size: V >= 2.
        length: L > T, the sequence length. seed: fixes the rule.
    """

    num_terms: int = 2
    max_delay: int = 3
    vocab_size: int = 8
    length: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("num_terms", self.num_terms, 1)
        check_int("max_delay", self.max_delay, self.num_terms)
        check_int("vocab_size", self.vocab_size, 2)
        check_int("length", self.length, self.max_delay + 1)
        check_int("seed", self.seed, 0)

    @property
    def seq_len(self) -> int:
        return self.length


def recurrence_rule(cfg: RecurrenceConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The fixed rule of a recurrence instance: ``(coefficients, delays)``, delays ascending.

    Drawn from ``cfg.seed`` (and the knobs) with a local generator; ``max(delays) == T`` and
    every coefficient is coprime to ``V``.
    """
    g = torch.Generator().manual_seed(derive_seed("rule", cfg.seed, cfg.num_terms,
                                                   cfg.max_delay, cfg.vocab_size))
    others = torch.randperm(cfg.max_delay - 1, generator=g)[: cfg.num_terms - 1] + 1
    delays = tuple(sorted([*others.tolist(), cfg.max_delay]))
    units = [c for c in range(1, cfg.vocab_size) if math.gcd(c, cfg.vocab_size) == 1]
    picks = torch.randint(0, len(units), (cfg.num_terms,), generator=g).tolist()
    return tuple(units[i] for i in picks), delays


def _run_recurrence(cfg: RecurrenceConfig, n: int, steps: int, g: torch.Generator) -> Tensor:
    coeffs, delays = recurrence_rule(cfg)
    x = torch.empty(n, steps, dtype=torch.long)
    x[:, : cfg.max_delay] = torch.randint(0, cfg.vocab_size, (n, cfg.max_delay), generator=g)
    for t in range(cfg.max_delay, steps):
        acc = torch.zeros(n, dtype=torch.long)
        for c, tau in zip(coeffs, delays, strict=True):
            acc += c * x[:, t - tau]
        x[:, t] = acc % cfg.vocab_size
    return x


def _sample_recurrence(cfg: RecurrenceConfig, n: int, g: torch.Generator) -> TaskBatch:
    x = _run_recurrence(cfg, n, cfg.length + 1, g)
    pred = (torch.arange(cfg.length) + 1 >= cfg.max_delay).expand(n, -1)
    return TaskBatch(x[:, :-1].clone(), x[:, 1:].clone(), pred.clone())


register_task(TaskSpec("recurrence", RecurrenceConfig, _sample_recurrence, {
    1: dict(num_terms=1, max_delay=2, vocab_size=8),
    2: dict(num_terms=2, max_delay=3, vocab_size=8),
    3: dict(num_terms=2, max_delay=4, vocab_size=16),
    4: dict(num_terms=3, max_delay=6, vocab_size=16),
    5: dict(num_terms=3, max_delay=8, vocab_size=32),
    6: dict(num_terms=4, max_delay=12, vocab_size=32),
}))
