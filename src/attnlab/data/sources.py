"""Batch sources of the training loop: what ``data.source`` in a training config names.

A source turns a :class:`~attnlab.data.config.DataConfig` into batches: ``corpus`` (random windows
of a tokenized text corpus) and ``task`` (a synthetic task of :mod:`attnlab.data.tasks`); more
are added by name with :func:`register_source`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from ..registry import Registry

if TYPE_CHECKING:
    from ..models import ModelConfig
    from .config import DataConfig

__all__ = [
    "BatchSource", "CorpusSource", "TaskSource", "available_sources", "fit_model_config", "make_source",
    "register_source",
]


class BatchSource(Protocol):
    """What the loop needs from data: ``vocab_size``, ``seq_len`` and ``next``.

    ``next(batch_size, generator, split)`` returns (inputs, targets, loss_mask), LongTensor,
    LongTensor and bool (batch_size, seq_len), drawing randomness from ``generator`` only (the
    loop checkpoints it). ``targets[:, t]`` is the token after ``inputs[:, :t + 1]``.
    """

    vocab_size: int
    seq_len: int

    def next(self, batch_size: int, generator: torch.Generator,
             split: str = "train") -> tuple[Tensor, Tensor, Tensor]: ...


class CorpusSource:
    """Random windows of ``context + 1`` tokens of a tokenized corpus (``attnlab.data``)."""

    def __init__(self, cfg: DataConfig, context: int) -> None:
        from . import corpus, tokenizers

        try:  # an unknown corpus fails here, not at the first batch
            corpus._resolve(cfg.name)
        except (ValueError, TypeError) as err:
            raise type(err)(f"data.{err}".replace("data.name_or_path", "data.name")) from None
        self._corpus, self._cfg, self._streams = corpus, cfg, {}
        self.tokenizer = tokenizers.get_tokenizer(cfg.tokenizer)
        self.vocab_size, self.seq_len = int(self.tokenizer.vocab_size), context

    def next(self, batch_size: int, generator: torch.Generator, split: str = "train"):
        if split not in self._streams:
            text = self._corpus.load_corpus(self._cfg.name, split=split, max_bytes=self._cfg.max_bytes)
            tokens = torch.as_tensor(self.tokenizer.encode(text), dtype=torch.long)
            self._streams[split] = self._corpus.TokenStream(tokens, self.seq_len)
        x, y = self._streams[split].batch(batch_size, generator)
        return x, y, torch.ones(x.shape, dtype=torch.bool)


class TaskSource:
    """Batches of a synthetic task of ``attnlab.data.tasks``; the loss mask is ``predictable``."""

    def __init__(self, cfg: DataConfig, context: int) -> None:
        from . import tasks

        self._tasks = tasks
        try:
            self.task = tasks.task_config(cfg.name, cfg.complexity, seed=cfg.task_seed)
        except (ValueError, TypeError) as err:
            raise type(err)(f"data: {err}") from None
        self.vocab_size, self.seq_len = int(self.task.vocab_size), int(self.task.seq_len)

    def next(self, batch_size: int, generator: torch.Generator, split: str = "train"):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        b = self._tasks.sample(self.task, batch_size, seed, split=split)
        return b.inputs, b.targets, b.predictable


_SOURCES: Registry[Any] = Registry("source", arg="source", entry="factory")
_SOURCES.register("corpus", CorpusSource)
_SOURCES.register("task", TaskSource)


def register_source(name: str, factory: Any, *, overwrite: bool = False) -> None:
    """Register ``factory(data_config, context) -> BatchSource`` as ``data.source = name``."""
    _SOURCES.register(name, factory, overwrite=overwrite)


def available_sources() -> list[str]:
    """Names accepted by ``data.source``."""
    return _SOURCES.names()


def make_source(data: DataConfig, model: ModelConfig) -> BatchSource:
    """Build the source that ``data.source`` names (importing the data modules lazily)."""
    return _SOURCES.get(data.source)(data, model.context)


def fit_model_config(model: ModelConfig, source: BatchSource) -> ModelConfig:
    """``model`` with ``vocab_size`` taken from the source when unset, checked otherwise.

    Raises:
        ValueError: ``model.vocab_size`` below the source's, or ``model.context`` shorter than
            the source's sequences.
    """
    if model.vocab_size is not None and model.vocab_size < source.vocab_size:
        raise ValueError(f"model.vocab_size ({model.vocab_size}) must be >= the data's vocab size "
                         f"({source.vocab_size}); leave it unset to take the data's")
    if model.context < source.seq_len:
        raise ValueError(f"model.context ({model.context}) must be >= the data's sequence length "
                         f"({source.seq_len})")
    return dataclasses.replace(model, vocab_size=model.vocab_size or source.vocab_size)
