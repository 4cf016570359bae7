"""Run folders for studies: provenance, resumable cells, CSV, markdown tables and plots.

A study writes into ``reports/<study>-<timestamp>/``::

    run.json      study, preset, config, seeds, versions, hardware, git commit (written first),
                  and one entry per launcher session (device, jobs, cells run, wall time)
    results/      one JSON file per finished cell, written atomically and named by the cell's
                  key and config hash: what a resumed run does not recompute
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
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..provenance import environment_info

__all__ = ["RunDir", "atomic_write_text", "choose_yscale", "line_plot", "markdown_table", "series_styles"]


class RunDir:
    """A study's output folder. Create a new one with :meth:`create`, reopen one with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cells: dict[str, tuple[str | None, Any]] = {}
        for file in sorted((path / "results").glob("*.json")):
            entry = json.loads(file.read_text())
            self._cells[entry["key"]] = (entry.get("hash"), entry["result"])

    @classmethod
    def create(cls, root: str | os.PathLike[str], study: str, *, config: Mapping[str, Any],
               seeds: Sequence[int], **extra: Any) -> RunDir:
        """Make ``root/<study>-<timestamp>/`` and write its run.json."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{study}-{stamp}"
        suffix = 1
        while path.exists():
            path = Path(root) / f"{study}-{stamp}-{suffix}"
            suffix += 1
        path.mkdir(parents=True)
        info = {"study": study, "created": stamp, "config": dict(config), "seeds": list(seeds),
                "environment": environment_info(), **extra}
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

    def cell(self, key: str, config_hash: str | None = None) -> Any | None:
        """The saved result of a finished cell, or None (also when ``config_hash`` is given and
        the cell was saved under another one: its config changed, so it is not finished)."""
        saved = self._cells.get(key)
        if saved is None or (config_hash is not None and saved[0] != config_hash):
            return None
        return saved[1]

    def save_cell(self, key: str, result: Any, config_hash: str | None = None) -> None:
        """Record a finished cell: ``results/<key>.json`` (``/`` in the key becomes ``~``), written
        through a temporary file and a rename, so a killed run leaves it whole or absent."""
        entry = {"key": key, "hash": config_hash, "result": result}
        name = key.replace("/", "~").replace(os.sep, "~") + ".json"
        atomic_write_text(self.path / "results" / name, json.dumps(entry, default=float) + "\n")
        self._cells[key] = (config_hash, result)

    def saved(self) -> list[str]:
        """The keys of the saved cells."""
        return list(self._cells)

    def update_info(self, **fields: Any) -> None:
        """Add or replace top-level fields of run.json (atomically)."""
        info = {**self.info, **fields}
        atomic_write_text(self.path / "run.json", json.dumps(info, indent=2, default=str) + "\n")

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


#: One marker per series (drawn hollow, so that markers of coinciding series stay visible).
MARKERS = "osD^v<>phX*P"

#: Errors spanning more than this many decades are plotted on a log axis (``yscale="auto"``).
LOG_DECADES = 1.5


def series_styles(names: Sequence[str], *, dashed: Iterable[str] = ()) -> dict[str, str]:
    """A matplotlib format string per series, distinct for up to 2 * len(MARKERS) series: each
    gets its own marker; the ``dashed`` ones (e.g. value-aware methods) "--" or ":", the others
    "-" or "-." (the second choice once the markers run out). Lines that coincide exactly (topr,
    topr-l2 and topk often do) then still show every series.

    >>> series_styles(["topr", "topk", "va-greedy"], dashed=["va-greedy"])
    {'topr': '-o', 'topk': '-s', 'va-greedy': '--D'}
    """
    dashed = set(dashed)
    out = {}
    for i, name in enumerate(names):
        lap = (i // len(MARKERS)) % 2
        line = ("--", ":")[lap] if name in dashed else ("-", "-.")[lap]
        out[name] = line + MARKERS[i % len(MARKERS)]
    return out


def choose_yscale(values: Iterable[float | None]) -> str:
    """``"log"`` when the finite positive values span more than :data:`LOG_DECADES` decades,
    ``"symlog"`` when they do and some value is 0 (or negative: shown linearly near 0),
    else ``"linear"``. None and non-finite values are ignored.

    >>> choose_yscale([0.5, 0.2, 0.1]), choose_yscale([0.5, 1e-3]), choose_yscale([0.5, 1e-3, 0.0])
    ('linear', 'log', 'symlog')
    """
    ys = [float(y) for y in values if y is not None and math.isfinite(float(y))]
    pos = [y for y in ys if y > 0]
    if len(pos) < 2 or math.log10(max(pos) / min(pos)) <= LOG_DECADES:
        return "linear"
    return "symlog" if any(y <= 0 for y in ys) else "log"


def line_plot(path: str | os.PathLike[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
              xlabel: str, ylabel: str, title: str = "", logx: bool = False,
              styles: Mapping[str, str] | None = None,
              errors: Mapping[str, Sequence[float]] | None = None, yscale: str = "linear",
              notes: Mapping[str, str] | None = None, caption: str = "") -> Path | None:
    """Plot named (xs, ys) series as lines into a PNG; returns None when matplotlib is missing.
    A few integer x values (levels, budgets, layers) get one tick each.

    ``styles`` maps a series name to a matplotlib format string (e.g. "--o", see
    :func:`series_styles`); markers are drawn hollow. ``errors`` maps a name to symmetric error
    bars. ``yscale``: "linear", "log", "symlog" or "auto" (:func:`choose_yscale` on the data).
    ``notes`` maps a series name to a text written at its last point (e.g. where a method stops);
    ``caption`` is a line under the axes (e.g. the methods not shown, and why). A series whose
    values equal an earlier one's (relative 1e-3) gets "(= earlier)" in the legend.

    Raises:
        ValueError: ``series`` holds no point (an empty plot is never written; say why instead),
            or an unknown ``yscale``.
    """
    if not any(len(xs) for xs, _ in series.values()):
        raise ValueError("series must hold at least one point (an empty plot is not written)")
    if yscale not in ("linear", "log", "symlog", "auto"):
        raise ValueError(f"yscale must be 'linear', 'log', 'symlog' or 'auto', got {yscale!r}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    if yscale == "auto":
        yscale = choose_yscale(y for _, ys in series.values() for y in ys)
    fig, ax = plt.subplots(figsize=(7.6 if len(series) > 4 else 6, 4.4 if caption else 4), dpi=110)
    drawn: dict[str, tuple[list[float], list[float]]] = {}
    for name, (xs, ys) in series.items():
        fmt = (styles or {}).get(name, "-o")
        err = (errors or {}).get(name)
        pts = (list(map(float, xs)), list(map(float, ys)))
        same = next((n for n, d in drawn.items() if d[0] == pts[0] and all(
            math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-12) for a, b in zip(d[1], pts[1], strict=True))), None)
        label = name if same is None else f"{name} (= {same})"
        drawn[name] = pts
        kw = dict(label=label, markersize=5, markerfacecolor="none")
        if err is not None:
            ax.errorbar(xs, ys, yerr=err, fmt=fmt, capsize=3, **kw)
        else:
            ax.plot(xs, ys, fmt, **kw)
        if notes and name in notes and len(xs):
            ax.annotate(notes[name], (xs[-1], ys[-1]), xytext=(6, 6), textcoords="offset points", fontsize=7,
                        arrowprops=dict(arrowstyle="-", lw=0.5))
    if logx:
        ax.set_xscale("log", base=2)
    if yscale == "symlog":
        pos = [y for _, ys in series.values() for y in ys if y > 0]
        ax.set_yscale("symlog", linthresh=min(pos))
    elif yscale == "log":
        ax.set_yscale("log")
    ticks = sorted({x for xs, _ in series.values() for x in xs})
    if ticks and len(ticks) <= 16 and all(float(x).is_integer() for x in ticks):
        # levels, budgets r and layer numbers: a tick at each value, none between them
        ax.set_xticks(ticks, [str(int(x)) for x in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (log)" if yscale != "linear" else ""))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 4:  # outside the axes, where it hides no data
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=7, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.06 if caption else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
