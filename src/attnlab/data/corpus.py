"""Text corpora for language-model experiments, and a token stream to batch them.

Sources, by ``name_or_path``:

- ``"stdlib"`` (default, no download): the ``.py`` files of the running Python's standard
  library (``sysconfig.get_paths()["stdlib"]``). Left out: ``site-packages``/``dist-packages``
  and every ``test``/``tests``/``idle_test`` folder (those hold deliberately malformed files and
  generated data, and would be 62% of the bytes). Each file goes to one split by a stable
  hash of its relative path (:func:`split_of`: 90% train, 5% validation, 5% test), and a
  split is its files' text in sorted path order, joined by ``"\\n"``. On CPython 3.11: about
  10.6 MB train, 0.78 MB validation, 0.74 MB test (657 + 41 + 36 files).
- ``"text:PATH"`` or a :class:`~pathlib.Path`: one text file (split by position: the first 90%
  of its characters train, then 5% validation, 5% test) or a folder (its non-hidden, non-binary
  files, split by path hash like the stdlib).
- ``"hf:NAME[:CONFIG]"`` or a known alias (``"wikitext-103-raw-v1"``, ``"wikitext-2-raw-v1"``):
  a Hugging Face ``datasets`` corpus, imported lazily; needs ``pip install datasets`` and the
  network on first use.

:func:`load_tokens` caches tokenized corpora under :func:`~attnlab.io.cache_dir`
(``$ATTNLAB_CACHE``, default ``~/.cache/attnlab``), keyed by the source's files (path, size,
mtime), the split, ``max_bytes`` and the tokenizer's fingerprint, and written atomically.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from attnlab.data.tokenizers import ByteTokenizer, Tokenizer
from attnlab.io import atomic_write_bytes, cache_dir

from .._checks import check_int

__all__ = ["TokenStream", "corpus_files", "load_corpus", "load_tokens", "split_of"]

SPLITS = ("train", "validation", "test")
HF_ALIASES = {
    "wikitext-103-raw-v1": ("wikitext", "wikitext-103-raw-v1"),
    "wikitext-2-raw-v1": ("wikitext", "wikitext-2-raw-v1"),
}
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def split_of(relative_path: str) -> str:
    """The split of a file: sha256 of its relative POSIX path, first 8 bytes mod 100:
    < 90 train, < 95 validation, else test. Stable across machines and runs."""
    bucket = int.from_bytes(hashlib.sha256(relative_path.encode()).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def _resolve(name_or_path: str | os.PathLike) -> tuple[str, object]:
    if isinstance(name_or_path, os.PathLike) or (
        isinstance(name_or_path, str) and name_or_path.startswith("text:")
    ):
        path = Path(name_or_path[5:] if isinstance(name_or_path, str) else name_or_path)
        if not path.exists():
            raise ValueError(f"name_or_path must name an existing file or folder, got {path}")
        return "text", path
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str or a Path, got {type(name_or_path).__name__}")
    if name_or_path == "stdlib":
        return "stdlib", Path(sysconfig.get_paths()["stdlib"])
    if name_or_path.startswith("hf:"):
        name, _, config = name_or_path[3:].partition(":")
        return "hf", (name, config or None)
    if name_or_path in HF_ALIASES:
        return "hf", HF_ALIASES[name_or_path]
    raise ValueError(
        "name_or_path must be 'stdlib', 'text:PATH', a Path, 'hf:NAME[:CONFIG]' or one of "
        f"{sorted(HF_ALIASES)}, got {name_or_path!r}"
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _walk(root: Path, stdlib: bool) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")
                       and not (stdlib and d in _SKIP_DIRS)]
        for f in filenames:
            if f.startswith(".") or (stdlib and not f.endswith(".py")):
                continue
            found.append(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(found)


def corpus_files(name_or_path: str | os.PathLike = "stdlib", split: str = "train") -> list[Path]:
    """The files of a folder corpus (``stdlib`` or a folder) in ``split``, in sorted path order.

    Raises:
        ValueError: if the source is not a folder corpus, or ``split`` is unknown.
    """
    kind, where = _resolve(name_or_path)
    _check_split(split)
    if kind == "hf" or (kind == "text" and not where.is_dir()):
        raise ValueError(f"name_or_path must be 'stdlib' or a folder, got {name_or_path!r}")
    return [where / rel for rel in _walk(where, kind == "stdlib") if split_of(rel) == split]


def _read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", errors="replace")


def _truncate(text: str, max_bytes: int | None) -> str:
    if max_bytes is None or len(text) * 4 <= max_bytes:
        return text
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def _load_hf(name: str, config: str | None, split: str) -> str:
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as err:
        raise RuntimeError(
            f"corpus {name!r} needs the Hugging Face datasets package: pip install datasets "
            "(and network access the first time, to download it)"
        ) from err
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as err:
        raise RuntimeError(
            f"could not load Hugging Face dataset {name!r} ({config}); the first load needs "
            f"network access: {err}"
        ) from err
    if "text" not in data.column_names:
        raise ValueError(f"dataset {name!r} must have a 'text' column, got {data.column_names}")
    return "".join(data["text"])


def _check_max_bytes(max_bytes: object) -> None:
    if max_bytes is not None:
        check_int("max_bytes", max_bytes, 1)


def load_corpus(
    name_or_path: str | os.PathLike = "stdlib", split: str = "train", max_bytes: int | None = None
) -> str:
    """The text of one split of a corpus (see the module docstring for the sources).

    Args:
        name_or_path: ``"stdlib"``, ``"text:PATH"``, a Path, ``"hf:NAME[:CONFIG]"`` or an alias.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        max_bytes: keep at most this many UTF-8 bytes (a prefix; stops reading files early).

    Raises:
        ValueError: unknown source or split, a missing path, ``max_bytes < 1``, or an empty split.
        RuntimeError: a Hugging Face corpus without ``datasets`` installed or the network.
    """
    kind, where = _resolve(name_or_path)
    _check_split(split)
    _check_max_bytes(max_bytes)
    if kind == "hf":
        text = _load_hf(*where, split)
    elif kind == "text" and where.is_file():
        full = _read_text(where) or ""
        cut = [0, int(len(full) * 0.90), int(len(full) * 0.95), len(full)]
        i = SPLITS.index(split)
        text = full[cut[i] : cut[i + 1]]
    else:
        parts, size = [], 0
        for path in corpus_files(name_or_path, split):
            part = _read_text(path)
            if part is None:
                continue
            parts.append(part)
            size += len(part.encode("utf-8")) + 1
            if max_bytes is not None and size >= max_bytes:
                break
        text = "\n".join(parts)
    if not text:
        raise ValueError(f"split {split!r} of {name_or_path!r} is empty")
    return _truncate(text, max_bytes)


def _source_key(name_or_path: str | os.PathLike, split: str) -> str:
    kind, where = _resolve(name_or_path)
    if kind == "hf":
        return f"hf:{where}"
    paths = [where] if where.is_file() else corpus_files(name_or_path, split)
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return f"{kind}:{sys.version_info[:3] if kind == 'stdlib' else ''}:{stats}"


def load_tokens(
    name_or_path: str | os.PathLike = "stdlib",
    split: str = "train",
    tokenizer: Tokenizer | None = None,
    max_bytes: int | None = None,
    cache: str | os.PathLike | None = None,
) -> Tensor:
    """``tokenizer.encode_tensor(load_corpus(...))`` (byte-level by default), cached on disk.

    Returns a LongTensor (N,). ``cache`` overrides the cache folder.

    Raises:
        TypeError: if ``tokenizer`` is not a tokenizer; otherwise as :func:`load_corpus`.
    """
    tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
    if not hasattr(tokenizer, "encode_tensor") or not hasattr(tokenizer, "fingerprint"):
        raise TypeError(f"tokenizer must be a ByteTokenizer or BPETokenizer, got "
                        f"{type(tokenizer).__name__}")
    _check_split(split)
    _check_max_bytes(max_bytes)
    key = hashlib.sha256(repr((_source_key(name_or_path, split), split, max_bytes,
                               tokenizer.fingerprint)).encode()).hexdigest()[:32]
    path = cache_dir(cache) / f"tokens-{key}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path, allow_pickle=False)).long()
    tokens = tokenizer.encode_tensor(load_corpus(name_or_path, split, max_bytes))
    dtype = np.uint8 if tokenizer.vocab_size <= 256 else (
        np.uint16 if tokenizer.vocab_size <= 65536 else np.int32)
    buffer = io.BytesIO()
    np.save(buffer, tokens.numpy().astype(dtype), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return tokens


class TokenStream:
    """Windows of ``context`` tokens and their next-token targets from one token sequence.

    Args:
        tokens: 1-D integer tensor (N,), N >= context + 1.
        context: window length L.
    """

    def __init__(self, tokens: Tensor, context: int) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 1 or tokens.is_floating_point():
            raise TypeError("tokens must be a 1-D integer tensor")
        check_int("context", context, 1)
        if tokens.numel() < context + 1:
            raise ValueError(f"tokens must hold at least context + 1 = {context + 1} tokens, "
                             f"got {tokens.numel()}")
        self.tokens, self.context = tokens.long(), context

    def __len__(self) -> int:
        """Number of non-overlapping evaluation windows."""
        return (self.tokens.numel() - 1) // self.context

    def _windows(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        idx = starts.to(self.tokens.device)[:, None] + torch.arange(
            self.context, device=self.tokens.device)
        return self.tokens[idx], self.tokens[idx + 1]

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch_size`` windows at uniform random starts: x (B, L) and y = x shifted by one."""
        check_int("batch_size", batch_size, 1)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        high = self.tokens.numel() - self.context
        starts = torch.randint(0, high, (batch_size,), generator=generator,
                               device=generator.device)
        return self._windows(starts)

    def iter_eval(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Every non-overlapping window (starts 0, L, 2L, ...) once, in order, in batches of at
        most ``batch_size``; the tail shorter than a window is left out."""
        check_int("batch_size", batch_size, 1)
        starts = torch.arange(len(self)) * self.context
        return (self._windows(chunk) for chunk in starts.split(batch_size))
