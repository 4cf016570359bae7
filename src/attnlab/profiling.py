"""Timing and peak memory of a call, the same way for every benchmark and the demo.

CPU peak memory is the process's resident-set high-water mark (Linux ``VmHWM``), reset before
the call through ``/proc/self/clear_refs``, after glibc's ``malloc_trim`` has handed freed heap
memory back (otherwise memory cached by an earlier call would hide this one's); on CUDA it is
``torch.cuda.max_memory_allocated``. Both are the increase over what was in use before the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["peak_memory", "time_call", "timed_peak_memory"]


def time_call(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> int | None:
    """Bytes by which ``fn()`` raised peak memory above what was in use before it.

    Returns None where it cannot be measured (CPU memory on a system without ``/proc``).
    """
    return timed_peak_memory(fn, device)[1]


def timed_peak_memory(fn: Callable[[], object], device: str = "cpu") -> tuple[float, int | None]:
    """(seconds, added peak bytes) of one call of ``fn``: both from the same run."""
    gc.collect()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            before = _status_kib("VmRSS")
        except OSError:
            before = None
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        return seconds, torch.cuda.max_memory_allocated() - before
    return seconds, None if before is None else (_status_kib("VmHWM") - before) * 1024
