"""Files written so that a reader never sees half of one: temporary file, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "cache_dir"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``
    (concurrent writers: the last one wins, intact). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``path`` if given, else ``$ATTNLAB_CACHE``, else ``~/.cache/attnlab``."""
    if path is None:
        path = os.environ.get("ATTNLAB_CACHE") or Path.home() / ".cache" / "attnlab"
    return Path(path)
