"""What a study is: a registered :class:`Study` with a preset dataclass, its cells, ``run_cell``,
``summarize`` and ``report``; presets are YAML files under ``configs/studies/<study>/``.

Adding a study is one module ``attnlab/studies/<name>.py`` (``-`` in the name becomes ``_``)
that calls :func:`register_study`, plus ``configs/studies/<name>/<preset>.yaml`` files. The
launcher (:mod:`attnlab.studies.launcher`, ``attnlab study NAME``) owns everything else: the run
folder, resume, the process pool, devices and provenance.

A :class:`Cell` is one unit of work (train one model, evaluate one method at one budget). Its
``config`` is everything its result depends on; :attr:`Cell.hash` of it names the saved result,
so a finished cell is never recomputed and a cell whose config changed never reuses an old result.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import Registry

__all__ = ["EXECUTION_ONLY", "STUDIES", "Cell", "CellContext", "PresetTable", "Study", "available_studies",
           "checkpoint_every", "config_dir", "get_study", "load_preset", "preset_from", "preset_names",
           "register_study", "study_description"]

#: preset fields that change how cells run, not what they compute (never part of a cell's hash).
EXECUTION_ONLY = ("jobs", "threads")


@dataclass(frozen=True)
class Cell:
    """One unit of a study's work.

    Attributes:
        key: a readable, unique name (``recurrence-L1-softmax-s0``); ``/`` allowed.
        config: JSON-able values that define the result (preset fields and the cell's coordinates).
        stage: cells of a stage run after every cell of the earlier stages (e.g. evaluate after train).
    """

    key: str
    config: Mapping[str, Any]
    stage: int = 0

    @property
    def hash(self) -> str:
        """sha256 (16 hex digits) of the config, as sorted JSON."""
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CellContext:
    """Where and on what a cell runs: the run folder and the torch device (``cpu``, ``cuda``,
    ``cuda:N``); ``results`` holds the finished cells of earlier stages, by key."""

    run_path: Path
    device: str = "cpu"
    results: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A study, as the launcher runs it.

    Attributes:
        name: the CLI name (``value-aware``).
        preset_type: the preset dataclass; the launcher builds it from YAML plus overrides.
        cells: ``cells(preset) -> list[Cell]``.
        run_cell: ``run_cell(preset, cell, ctx) -> dict`` (a module-level function: it runs in
            worker processes too).
        summarize: ``summarize(preset, results) -> summary`` (results: key -> result).
        report: ``report(preset, run_dir, results, summary, info) -> None``; writes report.md;
            ``info``: preset name, seconds of this session, device.
        seeds: ``seeds(preset) -> list[int]``, recorded in run.json.
        options: optional ``options(parser)`` adding study options; their non-None values are
            preset overrides under the option's ``dest``.
    """

    name: str
    preset_type: type
    cells: Callable[[Any], list[Cell]]
    run_cell: Callable[[Any, Cell, CellContext], Any]
    summarize: Callable[[Any, dict[str, Any]], Any]
    report: Callable[..., None]
    seeds: Callable[[Any], list[int]] = lambda preset: [getattr(preset, "seed", 0)]
    options: Callable[[Any], None] | None = None


STUDIES: Registry[Study] = Registry("study", arg="study", entry="study", entry_type=Study)


def register_study(study: Study) -> Study:
    """Register ``study`` under its name (re-importing its module replaces nothing else)."""
    return STUDIES.register(study.name, study, overwrite=True)


def config_dir() -> Path:
    """``$ATTNLAB_STUDY_CONFIGS``, else ``configs/studies`` of the source checkout."""
    env = os.environ.get("ATTNLAB_STUDY_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "configs" / "studies"


def _module_file(name: str) -> Path:
    return Path(__file__).with_name(name.replace("-", "_") + ".py")


def available_studies() -> list[str]:
    """Studies with a preset folder under :func:`config_dir` and a module (no import needed)."""
    root = config_dir()
    found = [p.name for p in root.iterdir() if p.is_dir() and _module_file(p.name).is_file()] if root.is_dir() else []
    return sorted(found)


def study_description(name: str) -> str:
    """The first paragraph of the study module's docstring, read without importing it."""
    doc = ast.get_docstring(ast.parse(_module_file(name).read_text())) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def preset_names(name: str) -> list[str]:
    """The YAML presets of study ``name``."""
    return sorted(p.stem for p in (config_dir() / name).glob("*.yaml"))


def get_study(name: str) -> Study:
    """The registered study ``name`` (importing its module on first use).

    Raises:
        ValueError: no such study (the message lists them).
    """
    if name not in STUDIES and name in available_studies():
        importlib.import_module(f"attnlab.studies.{name.replace('-', '_')}")
    if name not in STUDIES:
        raise ValueError(f"study must be one of {available_studies()}, got {name!r}")
    return STUDIES.get(name)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load_preset(study: Study | str, preset: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The preset ``preset`` of ``study``: ``configs/studies/<study>/<preset>.yaml`` (or a path to
    a YAML file), its lists read as tuples, with fields replaced by ``overrides``.

    Raises:
        ValueError: an unknown preset, an unknown field, or an invalid value (the dataclass checks).
    """
    import yaml

    study = get_study(study) if isinstance(study, str) else study
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else config_dir() / study.name / f"{preset}.yaml"
    if not path.is_file():
        raise ValueError(f"preset must be one of {preset_names(study.name)} or a YAML file, got {preset!r}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset file {str(path)!r} must hold a mapping of preset fields")
    return preset_from(study.preset_type, {**_tuples(data), **dict(overrides or {})})


def checkpoint_every(steps: int, pieces: int = 10) -> int:
    """How often a study's training cell checkpoints: ``pieces`` times over its ``steps``, so a
    killed cell (a preempted GPU, a lost machine) loses at most a tenth of its training and
    resumes from the last checkpoint with ``--resume``.

    >>> checkpoint_every(20000), checkpoint_every(5)
    (2000, 1)

    Raises:
        TypeError, ValueError: ``steps`` or ``pieces`` is not an int >= 1.
    """
    from .._checks import check_int

    return max(1, check_int("steps", steps, 1) // check_int("pieces", pieces, 1))


def preset_from(preset_type: type, values: Mapping[str, Any]) -> Any:
    """``preset_type(**values)``, naming unknown fields.

    Raises:
        ValueError: a field ``preset_type`` does not have, or an invalid value.
    """
    fields = {f.name for f in dataclasses.fields(preset_type)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"overrides must be fields of {preset_type.__name__}, got {unknown}")
    return preset_type(**values)


class PresetTable(Mapping):
    """A study's YAML presets by name (``PRESETS["quick"]``), each read on first access."""

    def __init__(self, study: str) -> None:
        self.study, self._cache = study, {}

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = load_preset(self.study, name)
        return self._cache[name]

    def __iter__(self):
        return iter(preset_names(self.study))

    def __len__(self) -> int:
        return len(preset_names(self.study))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in preset_names(self.study)
