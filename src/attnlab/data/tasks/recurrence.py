"""The ``recurrence`` task: ``x_t = (sum_j c_j x_{t - tau_j}) mod V`` with a rule fixed per instance.

Its first rungs are plain *delayed addition*, all ``c_j = 1``:
``x_t = (x_{t - tau_1} + ... + x_{t - tau_N}) mod V`` with ``N`` terms and largest delay exactly
``T``. These are the "NT" tasks of Gros (arXiv 2407.18601), autoregressive time sequences built
by delayed addition whose complexity is tuned by ``N`` and ``T`` (per a secondary review of the
paper; the exact values of ``N``, ``T`` and ``V`` below are attnlab's). The later rungs draw a
random unit coefficient ``c_j`` per term (``weighted=1``), attnlab's harder extension:

=====  ==  ==  ==  ========  ==========================================
level  N   T   V   weighted  rule family
=====  ==  ==  ==  ========  ==========================================
1      2   2   8   0         x_{t-1} + x_{t-2} (Fibonacci mod 8; 1 rule)
2      2   3   8   0         x_{t-a} + x_{t-3}, a in {1, 2}
3      2   4   16  0         x_{t-a} + x_{t-4}, a in {1, 2, 3}
4      3   6   16  0         x_{t-a} + x_{t-b} + x_{t-6}
5      3   6   16  1         c_1 x_{t-a} + c_2 x_{t-b} + c_3 x_{t-6}
6      3   8   32  1         three weighted terms, largest delay 8
7      4   12  32  1         four weighted terms, largest delay 12
=====  ==  ==  ==  ========  ==========================================

Levels 5-7 are the former levels 4-6 (same rules for the same seed). ``N = 1`` plain would
be a copy task, so the ladder starts at ``N = 2``.
"""

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
    must infer it from training data, as in Gros (2024). With ``weighted=0`` every ``c_j`` is 1
    (plain delayed addition); with ``weighted=1`` each is drawn among the units mod ``V``. The
    first ``T`` tokens of each sequence are uniform random seeds and are masked out; every later
    target is predictable. As ``c_T`` is a unit mod ``V`` (also ``c_T = 1`` of plain addition,
    for any ``V``, even or odd) the state map ``(x_{t-T}, .., x_{t-1}) -> (x_{t-T+1}, .., x_t)``
    is a bijection (``x_{t-T}`` is recovered as ``c_T^{-1} (x_t - ...)``): a uniform seed state
    stays uniform, so sequences never collapse to a constant and every ``x_t`` stays uniform on
    ``0..V-1``; guessing scores about ``1/V``.
    Example (N=1, T=2, V=5, c=(2,), tau=(2,): x_t = 2 x_{t-2} mod 5)::

        inputs       3 1 1 2 2 4 4 3
        targets      1 1 2 2 4 4 3 3
        predictable  . T T T T T T T

    Args:
        num_terms: N >= 1. max_delay: T >= N. vocab_size: V >= 2.
        length: L > T, the sequence length. seed: fixes the rule.
        weighted: 1 (default): random unit coefficients; 0: all coefficients 1.

    Plain delayed addition (N=2, T=3, V=8: ``x_t = x_{t-1} + x_{t-3}`` or ``x_{t-2} + x_{t-3}``,
    whichever ``seed`` draws):

    >>> cfg = RecurrenceConfig(num_terms=2, max_delay=3, vocab_size=8, weighted=0)
    >>> coeffs, delays = recurrence_rule(cfg)
    >>> coeffs, max(delays)
    ((1, 1), 3)
    """

    num_terms: int = 2
    max_delay: int = 3
    vocab_size: int = 8
    length: int = 64
    seed: int = 0
    weighted: int = 1

    def __post_init__(self) -> None:
        check_int("num_terms", self.num_terms, 1)
        check_int("max_delay", self.max_delay, self.num_terms)
        check_int("vocab_size", self.vocab_size, 2)
        check_int("length", self.length, self.max_delay + 1)
        check_int("seed", self.seed, 0)
        check_int("weighted", self.weighted, 0, 1)

    @property
    def seq_len(self) -> int:
        return self.length


def recurrence_rule(cfg: RecurrenceConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The fixed rule of a recurrence instance: ``(coefficients, delays)``, delays ascending.

    Drawn from ``cfg.seed`` (and the knobs) with a local generator; ``max(delays) == T`` and
    every coefficient is coprime to ``V`` (all 1 when ``cfg.weighted == 0``; the delays are then
    the ones the weighted rule of the same knobs and seed would have).
    """
    g = torch.Generator().manual_seed(derive_seed("rule", cfg.seed, cfg.num_terms,
                                                   cfg.max_delay, cfg.vocab_size))
    others = torch.randperm(cfg.max_delay - 1, generator=g)[: cfg.num_terms - 1] + 1
    delays = tuple(sorted([*others.tolist(), cfg.max_delay]))
    units = [c for c in range(1, cfg.vocab_size) if math.gcd(c, cfg.vocab_size) == 1]
    picks = torch.randint(0, len(units), (cfg.num_terms,), generator=g).tolist()
    if not cfg.weighted:
        return (1,) * cfg.num_terms, delays
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
    # plain delayed addition (Gros's NT tasks), then weighted rules; every knob non-decreasing
    1: dict(num_terms=2, max_delay=2, vocab_size=8, weighted=0),
    2: dict(num_terms=2, max_delay=3, vocab_size=8, weighted=0),
    3: dict(num_terms=2, max_delay=4, vocab_size=16, weighted=0),
    4: dict(num_terms=3, max_delay=6, vocab_size=16, weighted=0),
    5: dict(num_terms=3, max_delay=6, vocab_size=16, weighted=1),
    6: dict(num_terms=3, max_delay=8, vocab_size=32, weighted=1),
    7: dict(num_terms=4, max_delay=12, vocab_size=32, weighted=1),
}))
