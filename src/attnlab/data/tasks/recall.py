"""The ``recall`` task: multi-query associative recall.

attnlab's own addition to the complexity ladder, not a task of Gros (arXiv 2407.18601), whose
benchmarks are delayed-addition time sequences (``recurrence``, ``mixture``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._checks import check_int
from ._base import TaskBatch, TaskSpec, register_task

__all__ = ["RecallConfig"]


@dataclass(frozen=True)
class RecallConfig:
    """Multi-query associative recall: ``K`` key-value pairs, then ``Q`` queried keys.

    Keys are distinct tokens in ``[0, V/2)``, values any tokens in ``[V/2, V)``; the queries are
    ``Q`` distinct keys from the context, each followed by its value. Only the targets after a
    query key (its value) are predictable. Sequence length ``2(K + Q) - 1``.
    Example (K=2, Q=2, V=8)::

        inputs       1 6 3 5 3 5 1
        targets      6 3 5 3 5 1 6
        predictable  . . . . T . T

    Args:
        num_pairs: K >= 1. num_queries: 1 <= Q <= K (default K). vocab_size: V with K <= V // 2.
        seed: identifies the instance (the rule is the data itself, so it draws nothing).
    """

    num_pairs: int = 4
    vocab_size: int = 32
    num_queries: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("num_pairs", self.num_pairs, 1)
        check_int("vocab_size", self.vocab_size, 2)
        if self.num_pairs > self.vocab_size // 2:
            raise ValueError(
                f"num_pairs must be <= vocab_size // 2 = {self.vocab_size // 2} (distinct keys), "
                f"got {self.num_pairs}"
            )
        if self.num_queries is not None:
            check_int("num_queries", self.num_queries, 1)
            if self.num_queries > self.num_pairs:
                raise ValueError(f"num_queries must be <= num_pairs, got {self.num_queries}")
        check_int("seed", self.seed, 0)

    @property
    def queries(self) -> int:
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def seq_len(self) -> int:
        return 2 * (self.num_pairs + self.queries) - 1


def _sample_recall(cfg: RecallConfig, n: int, g: torch.Generator) -> TaskBatch:
    k, q, half = cfg.num_pairs, cfg.queries, cfg.vocab_size // 2
    keys = torch.rand(n, half, generator=g).argsort(dim=1)[:, :k]
    values = torch.randint(half, cfg.vocab_size, (n, k), generator=g)
    which = torch.rand(n, k, generator=g).argsort(dim=1)[:, :q]
    seq = torch.empty(n, 2 * (k + q), dtype=torch.long)
    seq[:, 0 : 2 * k : 2], seq[:, 1 : 2 * k : 2] = keys, values
    seq[:, 2 * k :: 2] = keys.gather(1, which)
    seq[:, 2 * k + 1 :: 2] = values.gather(1, which)
    pred = torch.zeros(n, cfg.seq_len, dtype=torch.bool)
    pred[:, 2 * k :: 2] = True
    return TaskBatch(seq[:, :-1].clone(), seq[:, 1:].clone(), pred)


register_task(TaskSpec("recall", RecallConfig, _sample_recall, {
    1: dict(num_pairs=2, vocab_size=16),
    2: dict(num_pairs=4, vocab_size=32),
    3: dict(num_pairs=8, vocab_size=64),
    4: dict(num_pairs=16, vocab_size=128),
    5: dict(num_pairs=32, vocab_size=256),
    6: dict(num_pairs=64, vocab_size=512),
}))
