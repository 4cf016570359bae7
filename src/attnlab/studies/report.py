"""Run folders for studies: provenance, resumable cells, CSV, markdown tables and plots.

A study writes into ``reports/<study>-<timestamp>/``::

    run.json      config, seeds, versions, hardware, git commit (written first)
    cells.jsonl   one finished cell per line: what a resumed run does not recompute
    *.csv         every number
    *.png         plots
    report.md     tables, embedded plots, the claims checked and their verdicts

Example:
    >>> import tempfile
    >>> from attnlab.studies.report import RunDir, markdown_table
    >>> run = RunDir.create(tempfile.mkdtemp(), "demo", config={"r": [1, 2]}, seeds=[0])
    >>> run.cell("r=1") is None
    True
    >>> run.save_cell("r=1", {"error": 0.25})
    >>> RunDir.open(run.path).cell("r=1")
    {'error': 0.25}
    >>> print(markdown_table([{"r": 1, "error": 0.25}], ["r", "error"]))
    | r | error |
    |---:|---:|
    | 1 | 0.25 |
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..provenance import environment_info

__all__ = ["RunDir", "atomic_write_text", "line_plot", "markdown_table"]


class RunDir:
    """A study's output folder. Create a new one with :meth:`create`, reopen one with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cells: dict[str, Any] = {}
        cells = path / "cells.jsonl"
        if cells.exists():
            for line in cells.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self._cells[entry["key"]] = entry["result"]

    @classmethod
    def create(cls, root: str | os.PathLike[str], study: str, *, config: Mapping[str, Any],
               seeds: Sequence[int]) -> RunDir:
        """Make ``root/<study>-<timestamp>/`` and write its run.json."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{study}-{stamp}"
        suffix = 1
        while path.exists():
            path = Path(root) / f"{study}-{stamp}-{suffix}"
            suffix += 1
        path.mkdir(parents=True)
        info = {"study": study, "created": stamp, "config": dict(config), "seeds": list(seeds),
                "environment": environment_info()}
        atomic_write_text(path / "run.json", json.dumps(info, indent=2, default=str) + "\n")
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """Reopen an existing run folder to resume it.

        Raises:
            ValueError: ``path`` is not a run folder (no run.json).
        """
        path = Path(path)
        if not (path / "run.json").is_file():
            raise ValueError(f"resume path must be a study run folder with a run.json, got {str(path)!r}")
        return cls(path)

    @property
    def info(self) -> dict[str, Any]:
        """The content of run.json."""
        return json.loads((self.path / "run.json").read_text())

    def cell(self, key: str) -> Any | None:
        """The saved result of a finished cell, or None."""
        return self._cells.get(key)

    def save_cell(self, key: str, result: Any) -> None:
        """Record a finished cell (one JSON line, flushed and fsynced before returning)."""
        line = json.dumps({"key": key, "result": result}, default=float) + "\n"
        with open(self.path / "cells.jsonl", "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._cells[key] = result

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Write rows (dicts; the union of their keys, in first-seen order) to ``name``."""
        rows = list(rows)
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        return atomic_write_text(self.path / name, buf.getvalue())

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file (e.g. report.md) into the run folder atomically."""
        return atomic_write_text(self.path / name, text)


def _format(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value)


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, floatfmt: str = ".4g",
                   headers: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of ``columns`` from ``rows`` (numbers right-aligned)."""
    rows = list(rows)
    headers = list(headers or columns)
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_format(r.get(c), floatfmt) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def line_plot(path: str | os.PathLike[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
              xlabel: str, ylabel: str, title: str = "", logx: bool = False,
              styles: Mapping[str, str] | None = None,
              errors: Mapping[str, Sequence[float]] | None = None) -> Path | None:
    """Plot named (xs, ys) series as lines into a PNG; returns None when matplotlib is missing.
    A few integer x values (levels, budgets, layers) get one tick each.

    ``styles`` maps a series name to a matplotlib format string (e.g. "--o"); ``errors`` to
    symmetric error bars.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, (xs, ys) in series.items():
        fmt = (styles or {}).get(name, "-o")
        err = (errors or {}).get(name)
        if err is not None:
            ax.errorbar(xs, ys, yerr=err, fmt=fmt, label=name, capsize=3, markersize=4)
        else:
            ax.plot(xs, ys, fmt, label=name, markersize=4)
    if logx:
        ax.set_xscale("log", base=2)
    ticks = sorted({x for xs, _ in series.values() for x in xs})
    if ticks and len(ticks) <= 16 and all(float(x).is_integer() for x in ticks):
        # levels, budgets r and layer numbers: a tick at each value, none between them
        ax.set_xticks(ticks, [str(int(x)) for x in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
