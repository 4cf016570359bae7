"""The argument parser of every ``attnlab`` command: a usage error is one line on stderr, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

__all__ = ["ArgumentParser", "check_hf_model", "first_paragraph"]


class ArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose usage errors print one line (no usage block):
    ``attnlab train: error: the following arguments are required: config (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring as one line (a description that never stops mid-sentence)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())



def check_hf_model(value: str, option: str = "--hf-model") -> None:
    """Refuse, before any work, a Hugging Face model that cannot load without a download: a path
    that is not a folder with a ``config.json``, or a name (``gpt2``, ``org/name``) missing from
    the local cache.

    Raises:
        ValueError: naming ``option`` and the value.
    """
    path = Path(value).expanduser()
    if path.exists() or value.startswith((".", "/", "~")) or value.count("/") > 1:
        if not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            raise ValueError(f"{option} must be a Hugging Face model folder (with config.json); {value!r} {what}")
        return
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # loading will say that transformers is missing
        return
    try:
        cached = try_to_load_from_cache(value, "config.json")
    except ValueError:  # not a valid repo id
        cached = None
    if not isinstance(cached, str):
        raise ValueError(f"{option} must be a local model folder or a model in the local Hugging Face cache "
                         f"(no download); {value!r} is neither")
