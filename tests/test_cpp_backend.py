"""The ``cpp`` backend (fused C++ CPU kernels) against the float64 reference, with gradients.

The registry-wide sweeps in test_attention.py/test_edge_cases.py run it at its default tiles,
which hold the whole of their small cases; here the tiles are shrunk to a few queries and keys,
so that rows span several key blocks, the causal diagonal cuts blocks that are not square, and
the last blocks are partial. Where the kernels cannot be built (no C++ compiler), the backend
refuses every call with the compiler's reason: that path is tested too, the rest is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab.backends import cpp, get_backend, resolve_backend
from attnlab.backends._common import FUSED_KERNEL_IDS
from attnlab.functional import canonicalize
from attnlab.testing import assert_close, plain_attention
from cases import Case

KERNELS = list(FUSED_KERNEL_IDS)
BUILD_ERROR = cpp.build_error()
needs_build = pytest.mark.skipif(BUILD_ERROR is not None, reason=str(BUILD_ERROR))

CASES = [
    Case(causal=True),
    Case(mask="random"),
    Case(mask="padding", causal=True),
    Case(mask="empty-rows"),
    Case(H=4, Hkv=2, causal=True, mask="random"),
    Case(H=4, Hkv=1, mask="empty-rows"),
    Case(L=17, S=40, Dv=8),
    Case(L=40, S=17, causal=True),
    Case(B=3, H=1, L=65, D=8, Dv=12, causal=True, mask="random"),
]
#: (block_q, block_k, tiles_per_task): one query per tile, tiles narrower and wider than they are
#: tall, forward tasks of several tiles whose last one is partial (and, causal, sees fewer keys).
BLOCKS = [(1, 3, 1), (4, 8, 3), (8, 5, 2)]


def _run(case: Case, problem_inputs, kernel: str, block_q: int, block_k: int, tiles_per_task: int):
    q, k, v, mask = problem_inputs
    problem, shape = canonicalize(q, k, v, mask, case.causal, None, case.gqa, 1e-6, attnlab.get_kernel(kernel))
    return cpp.cpp_attention(problem, block_q=block_q, block_k=block_k, tiles_per_task=tiles_per_task).reshape(shape)


def _reference(case: Case, kernel: str):
    """float64 output and q/k/v gradients for a random upstream gradient."""
    q, k, v, mask = case.make(torch.float64, requires_grad=True)
    out = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, is_causal=case.causal, enable_gqa=case.gqa,
                            backend="reference")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return out.detach(), torch.autograd.grad(out, (q, k, v), g), g


@needs_build
@pytest.mark.parametrize("blocks", BLOCKS, ids=lambda b: f"bq{b[0]}-bk{b[1]}-t{b[2]}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_small_tiles_match_the_float64_reference(dtype, kernel, case, blocks):
    inputs = case.make(dtype, requires_grad=True)
    ref, ref_grads, g = _reference(case, kernel)
    out = _run(case, inputs, kernel, *blocks)
    assert out.dtype == dtype
    assert_close(out, ref)
    grads = torch.autograd.grad(out, inputs[:3], g.to(dtype))
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert_close(got, want, what=f"d{name}")


@needs_build
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_follows_flash_attention_rule(dtype, kernel):
    """Computed in float32: error against float64 at most twice plain PyTorch's in that dtype."""
    case = Case(H=4, Hkv=2, causal=True, mask="random")
    q, k, v, mask = case.make(dtype, requires_grad=True)
    ref, ref_grads, g = _reference(case, kernel)
    out = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, is_causal=True, enable_gqa=True, backend="cpp")
    assert out.dtype == dtype
    kr, vr = (x.repeat_interleave(2, dim=1) for x in (k, v))
    plain = plain_attention(q, kr, vr, kernel=kernel, attn_mask=mask, is_causal=True)
    assert_close(out, ref, plain=plain)
    g = g.to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for name, got, pl, want in zip("qkv", grads, torch.autograd.grad(plain, (q, k, v), g), ref_grads, strict=True):
        assert got.dtype == dtype
        assert_close(got, want, plain=pl, what=f"d{name}")


@needs_build
def test_non_contiguous_inputs_and_a_broadcast_upstream_gradient():
    """q/k/v as (B, L, H, D) transposed views, a stride-0 mask dim; out.sum() gives a stride-0 gradient."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 19, 2, 16, generator=g).transpose(1, 2).requires_grad_() for _ in range(3))
    mask = (torch.rand(19, 1, generator=g) > 0.2).expand(19, 19)
    out = attnlab.attention(q, k, v, kernel="squared", attn_mask=mask, is_causal=True, backend="cpp")
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attnlab.attention(qd, kd, vd, kernel="squared", attn_mask=mask, is_causal=True, backend="reference")
    assert_close(out, ref.detach())
    for got, want in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (qd, kd, vd)),
                         strict=True):
        assert_close(got, want)


@needs_build
@pytest.mark.parametrize("kernel", KERNELS)
def test_rows_without_weight_give_zero_output_and_finite_gradients(kernel):
    """Fully masked rows, and eps=0 with all weights zero (Z = 0 is replaced by 1)."""
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 3, 5, 5, dtype=torch.bool)
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    out = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, backend="cpp")
    assert (out[0, 1, 2] == 0).all() and (out[1, :, 4] == 0).all()
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[0, 1, 2] == 0).all()
    zero_q = torch.zeros(1, 2, 3, 4, requires_grad=True)  # f(0) = 0 for these kernels
    out = attnlab.attention(zero_q, k[:1, :2].float(), v[:1, :2].float(), kernel=kernel, eps=0.0, backend="cpp")
    assert (out == 0).all()
    out.sum().backward()
    assert torch.isfinite(zero_q.grad).all()


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expressive_at_huge_and_tiny_scores(dtype):
    """|s| up to 1e30: s^2 overflows, yet f = 1 and f' = 0; s ~ 1e-20: f = s^2, no cancellation."""
    q = torch.tensor([[[[1e15], [1e-10], [0.0]]]], dtype=dtype, requires_grad=True)
    k = torch.tensor([[[[1e15], [2e-10], [1.0]]]], dtype=dtype, requires_grad=True)
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]], dtype=dtype, requires_grad=True)
    kw = dict(kernel="expressive", scale=1.0, eps=0.0)
    out = attnlab.attention(q, k, v, backend="cpp", **kw)
    ref = attnlab.attention(*(t.detach().double() for t in (q, k, v)), backend="reference", **kw)
    assert torch.isfinite(out).all()
    assert_close(out, ref)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@needs_build
def test_result_does_not_depend_on_the_thread_count():
    """Each task owns its outputs and gradients: the same bits with 1 thread and with several."""
    q, k, v, mask = Case(B=2, H=4, Hkv=2, L=33, S=33, causal=True, mask="random").make(torch.float32)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, max(2, before)):
            torch.set_num_threads(threads)
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            out = attnlab.attention(qq, kk, vv, kernel="expressive", attn_mask=mask, is_causal=True, enable_gqa=True,
                                    backend="cpp")
            results.append((out, *torch.autograd.grad(out.square().sum(), (qq, kk, vv))))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_build
def test_auto_runs_cpp_for_its_kernels_on_cpu():
    q = torch.randn(1, 2, 5, 4)
    for kernel in KERNELS:
        problem, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, attnlab.get_kernel(kernel))
        assert resolve_backend(attnlab.get_kernel(kernel), problem=problem).name == "cpp"
    problem, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, attnlab.get_kernel("softmax"))
    assert resolve_backend(attnlab.get_kernel("softmax"), problem=problem).name == "sdpa"
    assert not get_backend("cpp").supports(attnlab.get_kernel("softmax"))


def test_a_failed_build_is_a_refusal_and_auto_falls_back(monkeypatch):
    """No compiler: backend='cpp' raises the build's reason; auto runs 'chunked' instead."""
    reason = "backend 'cpp' could not build its C++ kernels (test): use backend 'chunked'"
    monkeypatch.setattr(cpp, "_load", lambda: reason)
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="could not build"):
        attnlab.attention(q, q, q, kernel="expressive", backend="cpp")
    problem, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, attnlab.get_kernel("expressive"))
    with pytest.raises(ValueError, match="could not build"):
        cpp.cpp_attention(problem)  # called directly, past the registry's refusal hook
    problem, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, attnlab.get_kernel("expressive"))
    assert resolve_backend(attnlab.get_kernel("expressive"), problem=problem).name == "chunked"
    assert_close(attnlab.attention(q, q, q, kernel="expressive"),
                 attnlab.attention(q.double(), q.double(), q.double(), kernel="expressive", backend="reference"))


def test_a_kernel_without_compiled_form_is_refused_when_called_directly():
    q = torch.randn(1, 1, 3, 4)
    problem, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, attnlab.get_kernel("softmax"))
    with pytest.raises(ValueError, match=r"backend 'cpp' computes kernels .* got 'softmax'"):
        cpp.cpp_attention(problem)


def test_missing_ninja_is_named(monkeypatch):
    monkeypatch.setattr(cpp, "_ninja_dir", lambda: None)
    cpp._load.cache_clear()
    try:
        assert "ninja" in cpp.build_error()
    finally:
        monkeypatch.undo()
        cpp._load.cache_clear()


def test_a_failed_build_says_why_and_is_cleared_for_the_next_try(monkeypatch, tmp_path):
    """torch's loader would skip rebuilding an unchanged source and only report a missing library."""
    from torch.utils import cpp_extension

    def build_directory(name, verbose=False):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "build.ninja").touch()
        return str(tmp_path / name)

    def failing_load(*args, **kwargs):
        raise RuntimeError("c++: error: the compiler said no")

    monkeypatch.setattr(cpp_extension, "_get_build_directory", build_directory)
    monkeypatch.setattr(cpp_extension, "load", failing_load)
    cpp._load.cache_clear()
    try:
        reason = cpp.build_error()
        assert "could not build" in reason and "the compiler said no" in reason
        assert [path.suffix for path in tmp_path.iterdir()] == [".lock"]  # the build folder is gone
    finally:
        monkeypatch.undo()
        cpp._load.cache_clear()


def test_ninja_is_found_off_path_and_path_is_restored(monkeypatch):
    """pip's ninja sits in the environment's bin, which is on PATH only when it is activated."""
    monkeypatch.setenv("PATH", "/nowhere")
    folder = cpp._ninja_dir()
    assert folder is not None and (cpp.Path(folder) / "ninja").exists()
    with cpp._on_path(folder):
        assert cpp.shutil.which("ninja") is not None
    assert cpp.os.environ["PATH"] == "/nowhere"


# --- the build cache: one build per install, one process building at a time -----------------
# A stand-in for the kernels that compiles in a second, so that these tests run real builds.
TINY_SOURCE = r"""
#include <Python.h>
#define INIT_NAME(name) INIT_NAME_(name)
#define INIT_NAME_(name) PyInit_##name
static PyModuleDef tiny = {PyModuleDef_HEAD_INIT, "tiny", nullptr, -1, nullptr};
PyMODINIT_FUNC INIT_NAME(TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&tiny); }
"""
LOAD = ("import sys; from pathlib import Path; from attnlab.backends import cpp; "
        "m = cpp._load_extension(Path(sys.argv[1])); print(m if isinstance(m, str) else 'loaded ' + m.__file__)")
HOLD_AND_DIE = """
import sys, time
from pathlib import Path
from attnlab.backends import cpp
name, build_dir, lock = cpp._build_paths(Path(sys.argv[1]))
with cpp._build_lock(lock, "test"):
    (build_dir / "lock").touch()  # torch's lock file, as its loader holds it while it builds
    print("holding", flush=True)
    time.sleep(600)
"""
needs_flock = pytest.mark.skipif(cpp.fcntl is None, reason="no fcntl.flock here (Windows)")


def _installs(tmp_path, monkeypatch, *names: str, source: Path | None = None) -> list[Path]:
    """The C++ source (TINY_SOURCE, or a copy of ``source``) in one folder per install, and an
    extension cache of this test's own (inherited by the processes it starts)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    paths = []
    for name in names:
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / ("tiny.cpp" if source is None else source.name))
        if source is None:
            paths[-1].write_text(TINY_SOURCE)
        else:
            shutil.copy(source, paths[-1])
    return paths


def _start(script: str, source: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", script, str(source)], stdout=out, stderr=subprocess.STDOUT)


def _wait_for(text: str, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(6000):  # a guard against a hang (10 min), not a timing assertion
        if text in log.read_text():
            return
        assert proc.poll() is None, f"exited before saying {text!r}: {log.read_text()}"
        time.sleep(0.1)
    pytest.fail(f"never said {text!r}: {log.read_text()}")


def _load_in_a_process(source: Path, log: Path) -> tuple[str, str]:
    """(the library it loaded, its whole output)."""
    proc = _start(LOAD, source, log)
    proc.wait(timeout=600)
    return _library(log.read_text()), log.read_text()


def _library(output: str) -> str:
    loaded = [line.removeprefix("loaded ") for line in output.splitlines() if line.startswith("loaded ")]
    assert len(loaded) == 1, output
    return loaded[0]


def test_the_kernels_cache_key_holds_the_source_path_and_torchs_location(tmp_path, monkeypatch):
    """torch's build.ninja names the source and torch's headers by absolute path: a key without
    them made a second clone or environment rebuild the first's library in place."""
    copy_a, copy_b = _installs(tmp_path, monkeypatch, "clone_a", "clone_b", source=cpp._SOURCE)
    names = {cpp._extension_name(path) for path in (cpp._SOURCE, copy_a, copy_b)}
    assert len(names) == 3 and cpp._extension_name() in names
    monkeypatch.setattr(torch, "__file__", str(tmp_path / "other_venv" / "torch" / "__init__.py"))
    assert cpp._extension_name() not in names


@needs_build
@needs_flock
def test_concurrent_first_use_builds_once_and_a_second_install_keeps_the_first_build(tmp_path, monkeypatch):
    """Two processes start on one source while this test holds the build lock: both say they
    wait, then exactly one compiles and both load its library. A second install of the same
    source compiles its own, once and saying so; the first's library is then loaded again
    untouched (one folder under a path-blind key was rebuilt silently by every other clone)."""
    clone_a, clone_b = _installs(tmp_path, monkeypatch, "clone_a", "clone_b")
    _, _, lock = cpp._build_paths(clone_a)
    logs = [tmp_path / "rank0.log", tmp_path / "rank1.log"]
    with cpp._build_lock(lock, "test"):
        procs = [_start(LOAD, clone_a, log) for log in logs]
        for proc, log in zip(procs, logs, strict=True):
            _wait_for("attnlab: waiting for another process's build", proc, log)
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    outputs = [log.read_text() for log in logs]
    assert sum(output.count("attnlab: compiling") for output in outputs) == 1, outputs
    library_a = _library(outputs[0])
    assert _library(outputs[1]) == library_a
    built_at = Path(library_a).stat().st_mtime_ns

    library_b, output = _load_in_a_process(clone_b, tmp_path / "clone_b.log")
    assert output.count("attnlab: compiling") == 1 and library_b != library_a
    again, output = _load_in_a_process(clone_a, tmp_path / "clone_a_again.log")
    assert "compiling" not in output and again == library_a
    assert Path(library_a).stat().st_mtime_ns == built_at


@needs_build
@needs_flock
def test_a_build_killed_midway_leaves_no_lock_to_wait_for(tmp_path, monkeypatch):
    """The OS drops a killed process's flock; torch's lock file, which outlives it (and which
    torch's loader would wait on forever), is then removed by the next build."""
    (source,) = _installs(tmp_path, monkeypatch, "clone")
    _, build_dir, _ = cpp._build_paths(source)
    holder = _start(HOLD_AND_DIE, source, tmp_path / "killed.log")
    _wait_for("holding", holder, tmp_path / "killed.log")
    holder.kill()
    holder.wait(timeout=60)
    assert (build_dir / "lock").exists()
    library, output = _load_in_a_process(source, tmp_path / "next.log")
    assert "waiting" not in output and output.count("attnlab: compiling") == 1
    assert Path(library).parent == build_dir


@pytest.mark.parametrize(("name", "value", "error"), [("block_q", 0, ValueError), ("block_k", -1, ValueError),
                                                    ("block_q", 2.0, TypeError), ("block_k", True, TypeError),
                                                    ("tiles_per_task", 0, ValueError)])
def test_bad_block_sizes_are_refused(name, value, error):
    q = torch.randn(1, 1, 3, 4)
    problem, _ = canonicalize(q, q, q, None, False, None, False, 1e-6, attnlab.get_kernel("expressive"))
    with pytest.raises(error, match=name):
        cpp.cpp_attention(problem, **{name: value})


def test_build_cpp_command_reports_the_library_or_the_reason(monkeypatch, capsys):
    from attnlab.cli import main

    if BUILD_ERROR is None:
        assert main(["build-cpp"]) == 0
        assert cpp.library_path() in capsys.readouterr().out
    monkeypatch.setattr(cpp, "_load", lambda: "backend 'cpp' could not build its C++ kernels (test)")
    assert main(["build-cpp"]) == 1
    assert "could not build" in capsys.readouterr().err
    assert cpp.library_path() is None
