"""The ``data`` section of a run config: where the training loop's batches come from."""

from __future__ import annotations

from dataclasses import dataclass

from .._strict import check_field_types
from .sources import available_sources

__all__ = ["DataConfig"]


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
