"""``attnlab study NAME --preset P [--device D] [--resume RUN] [--jobs N]``: the one launcher.

It owns the run folder (``reports/<study>-<timestamp>/``, see :mod:`attnlab.studies.report`),
provenance (run.json: the preset's name and fields, seeds, versions, hardware, git commit, and
one entry per session with its device, jobs and cells run), resume and the process pool:

- every finished cell's result is saved atomically under ``results/``, with the hash of the cell's
  config (:class:`attnlab.studies.base.Cell`); a resumed run recomputes none of them;
- ``--jobs N`` runs the cells of a stage in N spawned worker processes; each cell is submitted
  once, results are written by this process only, and a lock on the run folder keeps a second
  launcher from working on it at the same time, so no cell ever runs twice;
- ``--device`` (cpu, cuda, cuda:N) is passed to every cell; it may change between sessions;
- several GPUs: ``--device cuda:all`` (every visible GPU) or a list ``--device cuda:0,cuda:2``
  gives worker process i the device ``devices[i % len(devices)]`` (``--jobs`` defaults to one
  worker per device; a larger ``--jobs`` puts several workers on a GPU). Each cell still runs
  once, in whichever worker is free; the device each cell ran on is recorded in run.json
  (``sessions[-1]["cell_devices"]``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .base import EXECUTION_ONLY, Cell, CellContext, Study, get_study, load_preset, preset_from
from .report import RunDir

__all__ = ["check_device", "check_devices", "main", "run_study"]


def check_device(device: str) -> str:
    """``device`` if torch can use it: ``cpu``, ``cuda`` or ``cuda:N`` (N below the device count).

    Raises:
        ValueError: another string, or CUDA that this torch cannot see.
    """
    import torch

    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (several GPUs: 'cuda:all' or "
                         f"'cuda:0,cuda:1'), got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {device!r} but this torch ({torch.__version__}) sees no CUDA device")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def check_devices(device: str) -> list[str]:
    """The devices of ``--device``: one device (:func:`check_device`), ``cuda:all`` (every visible
    GPU, ``cuda:0, cuda:1, ...``) or a comma-separated list of distinct ``cuda:N``.

    Raises:
        ValueError: an invalid device, CUDA that this torch cannot see, a GPU index that is not
            visible, a list with a repeated device or with anything but ``cuda:N``.
    """
    import torch

    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")
    if device == "cuda:all":
        if not torch.cuda.is_available():
            raise ValueError(f"device is 'cuda:all' but this torch ({torch.__version__}) sees no CUDA device")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if "," not in device:
        return [check_device(device)]
    names = [d.strip() for d in device.split(",")]
    if any(not d.startswith("cuda:") or d == "cuda:all" for d in names):
        raise ValueError(f"device: a list must name GPUs as cuda:N (e.g. cuda:0,cuda:1), got {device!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"device: a list must not repeat a GPU (use --jobs for several workers per GPU), "
                         f"got {device!r}")
    return [check_device(d) for d in names]


class _Lock:
    """An exclusive lock on the run folder, released when the process ends (fcntl; a no-op elsewhere)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path / ".lock", "w")
        try:
            import fcntl

            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            self.file.close()
            raise ValueError(f"run folder {str(path)!r} is in use by another launcher") from None

    def release(self) -> None:
        self.file.close()


def _select_device(device: str) -> None:
    """Make ``device`` current in this process (``cuda:N``: ``torch.cuda.set_device(N)``), so
    that code given plain ``cuda`` uses GPU N too."""
    import torch

    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":")[1]))


#: this worker process's device, set once by :func:`_init_worker` (None in the launcher's process).
_WORKER_DEVICE: str | None = None


def _init_worker(assignments: Any, select: Any) -> None:
    """Pool initializer: take the next device of the round robin (worker i gets
    ``devices[i % len(devices)]``) and make it current for every cell this worker runs."""
    global _WORKER_DEVICE
    _WORKER_DEVICE = assignments.get()
    select(_WORKER_DEVICE)


def _work(run_cell: Any, preset: Any, cell: Cell, ctx: CellContext, threads: int) -> tuple[str, Any]:
    """Worker entry: a thread count and the cell's device (this worker's, in a pool), then the
    study's ``run_cell``; returns the device the cell ran on and its result."""
    import torch

    torch.set_num_threads(threads)
    if _WORKER_DEVICE is not None:
        ctx = dataclasses.replace(ctx, device=_WORKER_DEVICE)
    else:
        _select_device(ctx.device)
    return ctx.device, run_cell(preset, cell, ctx)


def _open(study: Study, preset: Any, out: Any, resume: Any, overrides: Mapping[str, Any]) -> tuple[Any, RunDir, str]:
    if resume is None:
        name = preset if isinstance(preset, str) else "custom"
        p = load_preset(study, preset, overrides) if isinstance(preset, str) else (
            dataclasses.replace(preset, **overrides) if overrides else preset)
        if not isinstance(p, study.preset_type):
            raise TypeError(f"preset must be a preset name or a {study.preset_type.__name__}, "
                            f"got {type(p).__name__}")
        run_dir = RunDir.create(out, study.name, config=dataclasses.asdict(p), seeds=study.seeds(p), preset=name,
                                sessions=[])
        return p, run_dir, name
    run_dir = RunDir.open(resume)
    info = run_dir.info
    if info.get("study") != study.name:
        raise ValueError(f"resume must be a {study.name} run folder, got one of study {info.get('study')!r}")
    changed = sorted(set(overrides) - set(EXECUTION_ONLY))
    if changed:
        raise ValueError(f"resume reuses the run's own preset; overrides may only set {list(EXECUTION_ONLY)}, "
                         f"got {changed}")
    from .base import _tuples

    return preset_from(study.preset_type, {**_tuples(info["config"]), **overrides}), run_dir, info.get("preset", "")


def run_study(name: str, preset: Any = "quick", *, out: str | os.PathLike[str] = "reports", resume: Any = None,
              device: str = "cpu", jobs: int | None = None, overrides: Mapping[str, Any] | None = None,
              progress: bool = True) -> Path:
    """Run (or resume) study ``name`` and return its run folder (with report.md).

    Args:
        preset: a preset name (``configs/studies/<name>/<preset>.yaml``), a YAML path, or a preset object.
        out: where the run folder is created (not used when resuming).
        resume: an earlier run folder of this study: its preset is reused, finished cells kept.
        device: ``cpu``, ``cuda``, ``cuda:N``, or several GPUs: ``cuda:all`` or ``cuda:0,cuda:1,...``
            (worker i runs its cells on device i modulo their number).
        jobs: worker processes (default: the preset's ``jobs``, else 1, but at least one per device
            of a list; 1 runs in this process).
        overrides: preset fields to replace; when resuming only ``jobs`` and ``threads``.

    Raises:
        ValueError / TypeError: an unknown study, preset or field, an invalid value or device, a
            ``resume`` folder of another study, or a run folder another launcher holds.
    """
    import torch

    study = get_study(name)
    devices = check_devices(device)
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    if jobs is not None and jobs < len(devices):
        raise ValueError(f"jobs must be at least the number of devices ({len(devices)}: {','.join(devices)}), "
                         f"got {jobs}")
    p, run_dir, preset_name = _open(study, preset, out, resume, dict(overrides or {}))
    jobs = jobs if jobs is not None else max(getattr(p, "jobs", 1), len(devices))
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    own = getattr(p, "threads", None)  # the preset's threads per cell, else the CPUs split over the jobs
    threads = own or max(1, torch.get_num_threads() // jobs)
    lock, start, saved_before = _Lock(run_dir.path), time.perf_counter(), len(run_dir.saved())
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    cell_devices: dict[str, str] = {}
    try:
        cells = study.cells(p)
        keys = [c.key for c in cells]
        if len(set(keys)) != len(keys):
            raise ValueError(f"study {name!r}: cell keys must be unique")
        results: dict[str, Any] = {}
        for stage in sorted({c.stage for c in cells}):
            mine = [c for c in cells if c.stage == stage]
            todo = []
            for c in mine:
                saved = run_dir.cell(c.key, c.hash)
                if saved is None:
                    todo.append(c)
                else:
                    results[c.key] = saved
            ctx = CellContext(run_dir.path, devices[0], dict(results))
            _run_stage(study, p, todo, ctx, run_dir, results, jobs, threads, progress, own is not None, devices,
                       cell_devices)
        summary = study.summarize(p, results)
        seconds = time.perf_counter() - start
        study.report(p, run_dir, results, summary, {"preset": preset_name, "seconds": seconds, "device": device})
    finally:
        sessions = run_dir.info.get("sessions", [])
        from ..provenance import git_commit

        # each session's own commit: a resume may run newer code than the run's first session
        sessions.append({"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "git_commit": git_commit(), "device": device, "devices": devices,
                         "jobs": jobs, "threads": threads, "cells_run": len(run_dir.saved()) - saved_before,
                         "cell_devices": cell_devices, "seconds": round(time.perf_counter() - start, 1),
                         "argv": sys.argv})
        run_dir.update_info(sessions=sessions)
        lock.release()
    return run_dir.path


def _run_stage(study: Study, preset: Any, todo: list[Cell], ctx: CellContext, run_dir: RunDir,
               results: dict[str, Any], jobs: int, threads: int, progress: bool, own: bool,
               devices: list[str], cell_devices: dict[str, str]) -> None:
    """Run ``todo`` (in-process on ``ctx.device``, or in a pool whose worker i runs on
    ``devices[i % len(devices)]``), saving each result, and its device, as it finishes."""
    import torch
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"{study.name} cells", dynamic_ncols=True, disable=not progress or not todo)

    def record(cell: Cell, ran: tuple[str, Any]) -> None:
        device, result = ran
        run_dir.save_cell(cell.key, result, cell.hash)
        cell_devices[cell.key] = device
        results[cell.key] = result
        bar.set_postfix_str(cell.key)
        bar.update(1)

    try:
        if jobs == 1 or len(todo) <= 1:
            before = torch.get_num_threads()
            try:
                for cell in todo:
                    record(cell, _work(study.run_cell, preset, cell, ctx, threads if jobs > 1 or own else before))
            finally:
                torch.set_num_threads(before)
        elif todo:
            context, workers = torch.multiprocessing.get_context("spawn"), min(jobs, len(todo))
            assignments = context.Queue()
            for i in range(workers):
                assignments.put(devices[i % len(devices)])
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                       initargs=(assignments, _select_device))
            try:
                futures = {pool.submit(_work, study.run_cell, preset, c, ctx, threads): c for c in todo}
                for future in as_completed(futures):
                    record(futures[future], future.result())
            finally:  # on an interruption, drop the queued cells instead of running them first
                pool.shutdown(wait=True, cancel_futures=True)
                assignments.close()
    finally:
        bar.close()


def _parser(study: Study) -> Any:
    from .._argparse import ArgumentParser
    from .base import preset_names, study_description

    ap = ArgumentParser(prog=f"attnlab study {study.name}", description=study_description(study.name))
    ap.add_argument("--preset", default="quick",
                    help=f"one of {preset_names(study.name)} (configs/studies/{study.name}/) or a YAML file")
    ap.add_argument("--out", default="reports", help="folder for the run folder")
    ap.add_argument("--resume", default=None, help="an earlier run folder to finish (finished cells are kept)")
    ap.add_argument("--device", default="cpu",
                    help="cpu, cuda, cuda:N, or several GPUs: cuda:all or cuda:0,cuda:1 (worker i on GPU i mod n)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="cells run in parallel processes (default: the preset's, at least one per device)")
    if study.options is not None:
        study.options(ap)
    return ap


def main(name: str, argv: Sequence[str] | None = None) -> int:
    """``attnlab study NAME [options]``; returns an exit code (2 and one line for a usage error,
    before any work)."""
    study = get_study(name)
    args = _parser(study).parse_args(argv)
    base = {"preset", "out", "resume", "device", "jobs"}
    overrides = {k: v for k, v in vars(args).items() if k not in base and v is not None}
    try:
        if args.resume is not None and not (Path(args.resume) / "run.json").is_file():
            raise ValueError(f"--resume must be a run folder: the resume path must be a study run folder with a "
                             f"run.json, got {args.resume!r}")
        path = run_study(name, args.preset, out=args.out, resume=args.resume, device=args.device, jobs=args.jobs,
                         overrides=overrides)
    except (ValueError, TypeError) as err:
        print(f"attnlab study {name}: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path / 'report.md'}")
    return 0
