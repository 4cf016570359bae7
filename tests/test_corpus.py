"""Tests of attnlab.data.corpus and attnlab.data.tokenizers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlab.io as attnlab_io
from attnlab.data import corpus as C
from attnlab.data import tokenizers as Tk

SPLITS = ("train", "validation", "test")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test writes to the user's cache."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- tokenizers


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(codec=None), max_size=60))
def test_byte_round_trip_any_str(text):
    tok = Tk.ByteTokenizer(special_tokens=("<eos>",))
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_tensor(text).tolist() == ids
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_byte_tokenizer_specials_and_invalid_utf8():
    tok = Tk.get_tokenizer("byte", special_tokens=("<eos>", "<pad>"))
    assert tok.vocab_size == 258 and tok.token_id("<pad>") == 257
    assert tok.encode("é") == [0xC3, 0xA9] and tok.encode_tensor("").shape == (0,)
    assert tok.decode([104, 256, 105]) == "h<eos>i"
    assert tok.decode([0xFF, 104]) == "\ufffdh"  # errors="replace"
    assert Tk.ByteTokenizer().fingerprint != tok.fingerprint


def test_bpe_train_round_trip_and_cache(tmp_path):
    text = Path(C.__file__).read_text() * 2
    tok = Tk.get_tokenizer("bpe", text=text, vocab_size=320, special_tokens=("<eos>",),
                           cache=tmp_path)
    assert not tok.from_cache and tok.vocab_size == 320
    assert len(tok.encode(text)) < 0.7 * len(text.encode())  # merges compress
    for s in [text[:500], "héllo 日本 🎉\r\n\t  x", "a<eos>b", "", "  \n\n  "]:
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode_tensor("def f():").tolist() == tok.encode("def f():")
    files = list(tmp_path.glob("bpe-*.json"))
    assert len(files) == 1 and not list(tmp_path.glob(".*tmp"))
    again = Tk.BPETokenizer.train(text, 320, special_tokens=("<eos>",), cache=tmp_path)
    assert again.from_cache and again.fingerprint == tok.fingerprint
    assert again.encode(text[:300]) == tok.encode(text[:300])
    other = Tk.BPETokenizer.train(text, 300, cache=tmp_path)  # another key: trains again
    assert not other.from_cache and len(list(tmp_path.glob("bpe-*.json"))) == 2


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=40))
def test_bpe_round_trip_any_valid_str(text):
    tok = Tk.BPETokenizer.train("hello world, hello attention\n" * 20, 270)
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_errors(monkeypatch):
    byte = Tk.ByteTokenizer()
    cases = [
        (lambda: Tk.get_tokenizer("wordpiece"), ValueError, "name must be one of"),
        (lambda: Tk.ByteTokenizer(("a", "a")), ValueError, "special_tokens must be distinct"),
        (lambda: byte.token_id("<eos>"), ValueError, "special must be one of"),
        (lambda: byte.encode(b"abc"), TypeError, "text must be a str"),
        (lambda: byte.decode([256]), ValueError, r"ids must be in \[0, 256\)"),
        (lambda: byte.decode([1.0]), TypeError, "ids must be ints"),
        (lambda: byte.decode(torch.zeros(2, 2, dtype=torch.long)), ValueError, "1-D integer"),
        (lambda: Tk.BPETokenizer.train("abc", 200), ValueError, "vocab_size must be >= 256"),
        (lambda: Tk.BPETokenizer.train("abc", 300.0), TypeError, "vocab_size must be an int"),
        (lambda: Tk.BPETokenizer.train("", 300), ValueError, "text must be non-empty"),
    ]
    for make, exc, match in cases:
        with pytest.raises(exc, match=match):
            make()
    bpe = Tk.BPETokenizer.train("abc abc abd\n" * 5, 260)
    with pytest.raises(ValueError, match="no lone surrogates"):
        bpe.encode("\ud800")
    with pytest.raises(ValueError, match="special must be a token"):
        bpe.token_id("<eos>")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(RuntimeError, match="pip install tokenizers"):
        Tk.BPETokenizer.train("abc abc abd\n" * 5, 261)


def test_cache_dir_and_atomic_write(tmp_path, monkeypatch):
    assert attnlab_io.cache_dir() == tmp_path / "cache"
    assert attnlab_io.cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("ATTNLAB_CACHE")
    assert attnlab_io.cache_dir() == Path.home() / ".cache" / "attnlab"
    target = tmp_path / "a" / "b.bin"
    attnlab_io.atomic_write_bytes(target, b"one")
    attnlab_io.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and sorted(p.name for p in target.parent.iterdir()) == [
        "b.bin"]


# ---------------------------------------------------------------- corpus


def test_stdlib_splits_are_disjoint_deterministic_and_non_empty():
    files = {s: C.corpus_files("stdlib", s) for s in SPLITS}
    sets = {s: set(f) for s, f in files.items()}
    assert all(sets.values())
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"]
                or sets["validation"] & sets["test"])
    assert files == {s: C.corpus_files("stdlib", s) for s in SPLITS}
    assert all(f == sorted(f) for f in files.values())
    everything = [p for f in files.values() for p in f]
    assert all(p.suffix == ".py" for p in everything)
    assert not any(part in {"site-packages", "test", "tests"} for p in everything for part in p.parts)
    n = len(everything)
    assert len(files["train"]) > 0.8 * n and len(files["validation"]) < 0.1 * n
    for s in SPLITS:
        head = C.load_corpus("stdlib", s, max_bytes=2000)
        assert 0 < len(head.encode()) <= 2000 and head == C.load_corpus("stdlib", s, max_bytes=2000)
    assert C.load_corpus(max_bytes=3000).startswith(files["train"][0].read_text()[:100])


def test_split_of_is_a_stable_hash():
    assert [C.split_of(f"pkg/m{i}.py") for i in range(3)] == [
        C.split_of(f"pkg/m{i}.py") for i in range(3)]
    counts = {s: 0 for s in SPLITS}
    for i in range(4000):
        counts[C.split_of(f"dir/file_{i}.py")] += 1
    assert 3450 < counts["train"] < 3750 and 120 < counts["validation"] < 280


def test_text_folder_and_file(tmp_path):
    root = tmp_path / "docs"
    for i in range(60):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"f{i:02d}.txt").write_text(f"file {i} é\n")
    (root / ".hidden").write_text("secret")
    (root / "blob.bin").write_bytes(b"\0\1\2")
    seen = []
    for s in SPLITS:
        rels = [p.relative_to(root).as_posix() for p in C.corpus_files(root, s)]
        assert rels == sorted(rels) and all(C.split_of(r) == s for r in rels)
        seen += rels
    assert sorted(seen) == sorted([*(f"d{i % 3}/f{i:02d}.txt" for i in range(60)), "blob.bin"])
    train = C.load_corpus(f"text:{root}", "train")
    expected = [p.read_text() for p in C.corpus_files(root, "train") if p.suffix == ".txt"]
    assert train == "\n".join(expected) and "secret" not in train
    one = tmp_path / "one.txt"
    one.write_text("".join(f"line {i}\n" for i in range(100)))
    parts = [C.load_corpus(one, s) for s in SPLITS]
    assert "".join(parts) == one.read_text()
    n = len(one.read_text())
    assert [len(p) for p in parts] == [int(0.9 * n), int(0.95 * n) - int(0.9 * n), n - int(0.95 * n)]


def test_load_tokens_caches_atomically(tmp_path):
    cache = tmp_path / "tok"
    a = C.load_tokens("stdlib", "validation", max_bytes=5000, cache=cache)
    expected = Tk.ByteTokenizer().encode_tensor(C.load_corpus("stdlib", "validation", 5000))
    assert torch.equal(a, expected) and a.dtype == torch.long
    (npy,) = cache.glob("tokens-*.npy")
    stamp = npy.stat().st_mtime_ns
    b = C.load_tokens("stdlib", "validation", max_bytes=5000, cache=cache)
    assert torch.equal(a, b) and npy.stat().st_mtime_ns == stamp
    bpe = Tk.BPETokenizer.train(C.load_corpus("stdlib", "train", 20000), 300, cache=cache)
    c = C.load_tokens("stdlib", "validation", bpe, max_bytes=5000, cache=cache)
    assert torch.equal(c, bpe.encode_tensor(C.load_corpus("stdlib", "validation", 5000)))
    assert len(list(cache.glob("tokens-*.npy"))) == 2


def test_datasets_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(RuntimeError, match=r"pip install datasets.*network"):
        C.load_corpus("wikitext-103-raw-v1")
    with pytest.raises(RuntimeError, match="pip install datasets"):
        C.load_corpus("hf:some/corpus:cfg", "validation")


def test_corpus_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (lambda: C.load_corpus("wikipedia"), ValueError, "name_or_path must be 'stdlib'"),
        (lambda: C.load_corpus(3), TypeError, "name_or_path must be a str or a Path"),
        (lambda: C.load_corpus(f"text:{tmp_path}/nope"), ValueError, "existing file or folder"),
        (lambda: C.load_corpus("stdlib", "dev"), ValueError, "split must be one of"),
        (lambda: C.load_corpus("stdlib", max_bytes=0), ValueError, "max_bytes must be >= 1"),
        (lambda: C.load_corpus(tmp_path / "empty"), ValueError, "is empty"),
        (lambda: C.corpus_files("wikitext-2-raw-v1"), ValueError, "must be 'stdlib' or a folder"),
        (lambda: C.load_tokens(tokenizer="byte"), TypeError, "tokenizer must be a"),
        (lambda: C.load_tokens(max_bytes=-1), ValueError, "max_bytes must be >= 1"),
        (lambda: C.load_tokens(max_bytes=2.5), TypeError, "max_bytes must be an int"),
    ]
    for make, exc, match in cases:
        with pytest.raises(exc, match=match):
            make()


# ---------------------------------------------------------------- token stream


def test_token_stream_batches_and_eval_windows():
    tokens = torch.arange(103)
    stream = C.TokenStream(tokens, context=10)
    x, y = stream.batch(7, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (7, 10) and torch.equal(y, x + 1)
    assert x.min() >= 0 and y.max() <= 102
    x2, _ = stream.batch(7, torch.Generator().manual_seed(0))
    x3, _ = stream.batch(7, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    starts = torch.cat([stream.batch(64, torch.Generator().manual_seed(s))[0][:, 0]
                        for s in range(20)])
    assert starts.min() == 0 and starts.max() == 103 - 10 - 1  # every start reachable
    batches = list(stream.iter_eval(4))
    assert len(stream) == 10 and [b[0].shape[0] for b in batches] == [4, 4, 2]
    xs = torch.cat([b[0] for b in batches])
    assert torch.equal(xs.flatten(), tokens[:100]) and torch.equal(
        torch.cat([b[1] for b in batches]).flatten(), tokens[1:101])


def test_token_stream_errors():
    stream = C.TokenStream(torch.arange(20), 4)
    cases = [
        (lambda: C.TokenStream(torch.zeros(5), 2), TypeError, "tokens must be a 1-D integer"),
        (lambda: C.TokenStream(torch.arange(4), 4), ValueError, "at least context \\+ 1 = 5"),
        (lambda: C.TokenStream(torch.arange(9), 0), ValueError, "context must be >= 1"),
        (lambda: stream.batch(2, 0), TypeError, "generator must be a torch.Generator"),
        (lambda: stream.batch(0, torch.Generator()), ValueError, "batch_size must be >= 1"),
        (lambda: stream.iter_eval(2.5), TypeError, "batch_size must be an int"),
    ]
    for make, exc, match in cases:
        with pytest.raises(exc, match=match):
            make()
