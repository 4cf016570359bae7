"""Tokenizers: byte-level by default, BPE trained locally with Hugging Face ``tokenizers``.

Both have one interface: ``encode(text) -> list[int]``, ``encode_tensor(text) -> LongTensor``,
``decode(ids) -> str``, ``vocab_size`` and ``fingerprint`` (a string that changes whenever the
token ids could, used by cache keys). Pick one by name with :func:`get_tokenizer`::

    >>> tok = get_tokenizer("byte", special_tokens=("<eos>",))
    >>> tok.encode("hé"), tok.vocab_size, tok.token_id("<eos>")
    ([104, 195, 169], 257, 256)
    >>> tok.decode([104, 195, 169, 256])
    'hé<eos>'

Files written here (trained BPE models, and tokenized corpora from :mod:`attnlab.data.corpus`)
go under :func:`attnlab.io.cache_dir` and are written atomically.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_int
from ..io import atomic_write_bytes, cache_dir

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "available_tokenizers",
    "get_tokenizer",
]


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


def _check_ids(ids: Sequence[int] | Tensor, vocab_size: int) -> list[int]:
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
            raise ValueError(
                f"ids must be a 1-D integer tensor, got {ids.dtype} {tuple(ids.shape)}"
            )
        ids = ids.tolist()
    ids = list(ids)
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        raise TypeError(f"ids must be ints, got {type(bad[0]).__name__}")
    if ids and not 0 <= min(ids) <= max(ids) < vocab_size:
        raise ValueError(f"ids must be in [0, {vocab_size}), got range [{min(ids)}, {max(ids)}]")
    return ids


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255, then ``special_tokens`` as 256, 257, ...

    ``decode(encode(s)) == s`` for every str (lone surrogates go through ``surrogatepass``).
    ``encode`` never emits a special id; ``decode`` renders one as its string and decodes
    invalid UTF-8 with ``errors="replace"``.

    Raises:
        ValueError: if ``special_tokens`` has duplicates or empty strings.
    """

    name = "byte"

    def __init__(self, special_tokens: Sequence[str] = ()) -> None:
        specials = tuple(special_tokens)
        valid = all(isinstance(s, str) and s for s in specials)
        if len(set(specials)) != len(specials) or not valid:
            raise ValueError(f"special_tokens must be distinct non-empty strs, got {specials}")
        self.special_tokens = specials

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.special_tokens)

    @property
    def fingerprint(self) -> str:
        return "byte-v1:" + "\x00".join(self.special_tokens)

    def token_id(self, special: str) -> int:
        """The id of a special token. Raises ValueError if ``special`` is not one."""
        if special not in self.special_tokens:
            raise ValueError(f"special must be one of {self.special_tokens}, got {special!r}")
        return 256 + self.special_tokens.index(special)

    def encode(self, text: str) -> list[int]:
        return list(_check_text(text).encode("utf-8", errors="surrogatepass"))

    def encode_tensor(self, text: str) -> Tensor:
        """``encode`` as a LongTensor (L,), without a Python list in between."""
        data = bytearray(_check_text(text).encode("utf-8", errors="surrogatepass"))
        if not data:
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(data, dtype=torch.uint8).long()

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        parts, run = [], bytearray()
        for i in _check_ids(ids, self.vocab_size):
            if i < 256:
                run.append(i)
                continue
            parts.append(_decode_utf8(bytes(run)))
            parts.append(self.special_tokens[i - 256])
            run.clear()
        parts.append(_decode_utf8(bytes(run)))
        return "".join(parts)


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8", errors="surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


def _import_tokenizers():
    try:
        return importlib.import_module("tokenizers")
    except ImportError as err:
        raise RuntimeError(
            "the 'bpe' tokenizer needs the Hugging Face tokenizers package: "
            "pip install tokenizers (or pip install attnlab[hf])"
        ) from err


class BPETokenizer:
    """Byte-level BPE (GPT-2 style, no prefix space) from Hugging Face ``tokenizers``.

    Build one with :meth:`train`; ``decode(encode(s)) == s`` for every valid Unicode str.
    ``encode`` works line by line (a token never spans a line end) so it runs in parallel;
    on a 2-core CPU it encodes about 0.5 MB of Python source per second.

    Args:
        tokenizer_json: the serialized ``tokenizers.Tokenizer``.
        from_cache: whether it was loaded from disk (set by :meth:`train`).
    """

    name = "bpe"

    def __init__(self, tokenizer_json: str, *, from_cache: bool = False) -> None:
        self._tok = _import_tokenizers().Tokenizer.from_str(tokenizer_json)
        self.from_cache = from_cache
        self.fingerprint = "bpe-v1:" + hashlib.sha256(tokenizer_json.encode()).hexdigest()[:32]

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        *,
        special_tokens: Sequence[str] = (),
        cache: str | os.PathLike | None = None,
    ) -> BPETokenizer:
        """Train on ``text`` or load the model cached for ``(text, vocab_size, special_tokens)``.

        Args:
            text: training text. vocab_size: target size, >= 256 + len(special_tokens) (the
                byte alphabet); a small text may give fewer merges.
            special_tokens: strings that get their own ids. cache: folder (see :func:`attnlab.io.cache_dir`).

        Raises:
            ValueError: if ``vocab_size`` is below the byte alphabet or ``text`` is empty.
            RuntimeError: if the ``tokenizers`` package is missing.
        """
        text, specials = _check_text(text), tuple(special_tokens)
        check_int("vocab_size", vocab_size, 256 + len(specials))
        if not text:
            raise ValueError("text must be non-empty to train a BPE tokenizer")
        hf = _import_tokenizers()
        key = hashlib.sha256(f"bpe-v1:{vocab_size}:{specials!r}:".encode())
        key.update(text.encode("utf-8", errors="surrogatepass"))
        path = cache_dir(cache) / f"bpe-{key.hexdigest()[:32]}.json"
        if path.exists():
            return cls(path.read_text(encoding="utf-8"), from_cache=True)
        tok = hf.Tokenizer(hf.models.BPE())
        tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(specials),
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        serialized = tok.to_str()
        atomic_write_bytes(path, serialized.encode("utf-8"))
        return cls(serialized)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, special: str) -> int:
        """The id of a special token. Raises ValueError if ``special`` is not one."""
        idx = self._tok.token_to_id(special)
        if idx is None:
            raise ValueError(f"special must be a token of this tokenizer, got {special!r}")
        return idx

    def encode(self, text: str) -> list[int]:
        try:
            _check_text(text).encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError("text must be valid Unicode (no lone surrogates) for BPE") from err
        lines = text.splitlines(keepends=True)
        encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        encodings = encode_batch(lines, add_special_tokens=False)
        return list(itertools.chain.from_iterable(e.ids for e in encodings))

    def encode_tensor(self, text: str) -> Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        return self._tok.decode(_check_ids(ids, self.vocab_size), skip_special_tokens=False)


Tokenizer = ByteTokenizer | BPETokenizer


def available_tokenizers() -> list[str]:
    """Names accepted by :func:`get_tokenizer`."""
    return ["bpe", "byte"]


def get_tokenizer(name: str, **kwargs) -> Tokenizer:
    """A tokenizer by name: ``"byte"`` -> ``ByteTokenizer(**kwargs)``, ``"bpe"`` ->
    ``BPETokenizer.train(**kwargs)`` (needs ``text`` and ``vocab_size``).

    Raises:
        ValueError: if ``name`` is not one of :func:`available_tokenizers`.
    """
    if name == "byte":
        return ByteTokenizer(**kwargs)
    if name == "bpe":
        return BPETokenizer.train(**kwargs)
    raise ValueError(f"name must be one of {available_tokenizers()}, got {name!r}")
