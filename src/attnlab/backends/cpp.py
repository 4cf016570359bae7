"""The cpp backend: fused C++ kernels on CPU for the non-exponential kernels, forward and backward.

Same semantics as every backend (see ``reference.py``). The kernels (``csrc/attention_cpu.cpp``)
work flash-style: a forward task takes a few tiles of queries and, for each block of keys (read
into the cache once for all of them), computes each tile's scores with one BLAS gemm into a
buffer that stays in cache, applies f, the mask and the causal triangle and sums each row in a
single pass, and accumulates ``f(s) @ v`` with a second gemm. EA needs no running maximum, so no
block is ever rescaled. The backward recomputes the scores (five gemms per tile) in one task per
key head, which owns that head's dk and dv, so the result does not depend on the number of
threads. Eager PyTorch (the ``chunked`` backend) needs
four to eight memory passes over each score tile; here there is one, while the tile is in cache.

**Build.** The C++ source is compiled on first use with ``torch.utils.cpp_extension`` (a C++20
compiler, as torch's headers need, and ninja; 34-39 s on an idle 2-core CPU, about 2 min beside
other jobs) into torch's extension cache, under a name hashed from everything the build reads:
the source's contents and absolute path, the flags and compiler, torch's version and location,
Python's ABI and headers, the processor. Each clone or virtual environment thus builds once, says
so on stderr, and later processes only load it (2-6 s with the import of torch). Processes that
start together (torchrun ranks, pytest workers) build once: the others wait on an OS file lock,
which dies with its holder. A failed build (no compiler, or a torch
whose CPU library exports no ``sgemm_``) is remembered for the process: the backend then refuses
every call with the compiler's reason and ``auto`` falls back to ``chunked``. Build it ahead of
time, and see why it fails, with ``attnlab build-cpp``.

**Accepted**: CPU tensors; the built-in expressive, squared, relu and relu2 kernels; any boolean
mask, causal, GQA; attention dropout (the counter-based mask of ``_common.dropout_keep``, the
same as ``reference``'s and ``chunked``'s for a seed). float32 and float64 compute in their own
dtype, float16/bfloat16 in float32. The backward is first-order only (double backward raises).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from .._checks import check_int
from ._common import FUSED_KERNEL_IDS, Problem, dropout_threshold, first_order_backward, is_fused_kernel
from .chunked import chunked_attention

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

#: Queries and keys per tile: a 128 x 512 fp32 score tile is 256 KiB, inside one core's L2. 128
#: queries rather than 64 halve how often k and v stream through the cache, which showed at
#: L >= 8192 (where one head's k and v outgrow L2); 32 was slower everywhere.
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 512
#: Query tiles per forward task: the task reads each block of k and v once for all of them.
DEFAULT_TILES_PER_TASK = 4

_SOURCE = Path(__file__).with_name("csrc") / "attention_cpu.cpp"
# -fopenmp compiles at::parallel_for's OpenMP region (an inline header function) into the
# extension; it is deliberately not a linker flag, so the region binds to the OpenMP runtime
# torch has already loaded (the one its BLAS calls run under) instead of a second one.
# -march=native suits a cache keyed by this machine's processor (see _extension_name).
_CFLAGS = ["-O3", "-fopenmp"] + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])
#: What a build takes on the project's 2-core CPU: 34-39 s idle, 112 s beside other jobs (load 5).
_BUILD_TIME = "35 s to 2 min"


def _extension_name(source: Path = _SOURCE) -> str:
    """A name unique to everything the build reads: the source's contents *and absolute path*, the
    flags, the compiler, torch's version and location, Python's ABI and headers, the processor.

    torch's build.ninja holds the absolute paths of the source and of torch's and Python's headers:
    under a name that omits them, a second clone or virtual environment sharing torch's extension
    cache rewrites it, and ninja silently recompiles (then again for the first clone)."""
    digest = hashlib.sha256()
    for part in (source.read_bytes(), str(source.resolve()), " ".join(_CFLAGS), os.environ.get("CXX", "c++"),
                 torch.__version__, str(Path(torch.__file__).resolve().parent),
                 sys.implementation.cache_tag + sys.abiflags, sysconfig.get_paths()["include"],
                 _processor_fingerprint()):
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return f"attnlab_cpu_{digest.hexdigest()[:12]}"


def _processor_fingerprint() -> str:
    """The model and the instruction-set flags, where Linux says them (the -march=native target)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    return "\n".join(keep) or platform.machine()


@contextlib.contextmanager
def _build_lock(lock_path: Path, what: str):
    """Exclusive use of one build across processes (torchrun ranks, pytest workers, two clones).

    An OS lock (``flock``) on ``lock_path``, which the OS releases when its holder exits or is
    killed, so no lock outlives its build. Says so on stderr when another process holds it. Where
    ``fcntl`` does not exist (Windows), only torch's own lock file guards the build."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:  # closing it releases the lock
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"attnlab: waiting for another process's build of {what} (lock {lock_path})",
                      file=sys.stderr, flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _built(build_dir: Path, name: str) -> bool:
    """Whether the compiled library is already in ``build_dir``."""
    return any(build_dir.glob(f"{name}*.so")) or any(build_dir.glob(f"{name}*.pyd"))


def _ninja_dir() -> str | None:
    """The folder of the ninja executable: the pip package's (a dependency; it lands in the
    virtual environment's bin, which is not on PATH unless the environment is activated), else
    one on PATH, else None."""
    if importlib.util.find_spec("ninja") is not None:
        import ninja

        return ninja.BIN_DIR
    found = shutil.which("ninja")
    return None if found is None else str(Path(found).parent)


@contextlib.contextmanager
def _on_path(folder: str):
    """``folder`` first on PATH while the build runs (torch's loader runs ``ninja`` by name)."""
    before = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(p for p in (folder, before) if p)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = before


@functools.cache
def _load() -> ModuleType | str:
    """The compiled extension, or the reason it cannot be had (tried once per process)."""
    return _load_extension(_SOURCE)


def _build_paths(source: Path) -> tuple[str, Path, Path]:
    """The extension's name, its build folder (created) and the lock file beside it."""
    from torch.utils import cpp_extension

    name = _extension_name(source)
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    return name, build_dir, build_dir.with_name(f"{name}.lock")


def _load_extension(source: Path) -> ModuleType | str:
    """The extension compiled from ``source`` (built first where needed), or why it cannot be had.

    The build goes to ``<torch's extension cache>/<name>`` (``TORCH_EXTENSIONS_DIR`` moves the
    cache), with ``name`` from :func:`_extension_name`. One process builds at a time, under
    :func:`_build_lock`; the others wait for it and then only load the library."""
    ninja_dir = _ninja_dir()
    if ninja_dir is None:
        return "backend 'cpp' needs the ninja build tool to compile its kernels: pip install ninja"
    from torch.utils import cpp_extension

    try:
        name, build_dir, lock_path = _build_paths(source)
        with _build_lock(lock_path, f"the 'cpp' backend's kernels in {build_dir}"):
            # torch's own lock file, taken inside ours: one found here was left by a killed build
            # (torch's loader would wait for it to vanish, forever).
            (build_dir / "lock").unlink(missing_ok=True)
            if not _built(build_dir, name):
                print(f"attnlab: compiling the 'cpp' backend's CPU kernels (about {_BUILD_TIME}, once) into "
                      f"{build_dir}", file=sys.stderr, flush=True)
            try:
                with _on_path(ninja_dir):
                    return cpp_extension.load(name, [str(source)], extra_cflags=_CFLAGS, verbose=False)
            except Exception:
                # torch's loader would skip the build of an unchanged source next time and report
                # only the missing library: clear the failed build so the next try says why.
                if not _built(build_dir, name):
                    shutil.rmtree(build_dir, ignore_errors=True)
                raise
    except Exception as err:  # a missing compiler, a compile or link error, an unloadable library
        detail = " ".join(str(err).split())[-600:]
        return f"backend 'cpp' could not build its C++ kernels ({type(err).__name__}: {detail}): use backend 'chunked'"


def build_error() -> str | None:
    """Why the kernels cannot be built or loaded here, or None once they are loaded (builds them)."""
    module = _load()
    return module if isinstance(module, str) else None


def library_path() -> str | None:
    """Where the compiled kernels were loaded from, or None where they cannot be built."""
    module = _load()
    return None if isinstance(module, str) else module.__file__


def refusal(problem: Problem) -> str | None:
    """Why the backend refuses ``problem`` (None when it accepts it); may build the kernels."""
    if problem.q.device.type != "cpu":
        return f"backend 'cpp' runs on CPU tensors, got {problem.q.device.type}: use backend 'triton' or 'chunked'"
    return build_error()


class _CppAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, kernel_id, causal, scale, eps, block_q, block_k, tiles_per_task, dropout):
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        qc = q.to(dtype).contiguous()
        kc, vc = (t.squeeze(2).to(dtype).contiguous() for t in (k, v))
        mask_arg = _expanded_mask(mask, q.shape, k.shape[-2])
        out, z = _load().forward(qc, kc, vc, mask_arg, kernel_id, causal, scale, eps, block_q, block_k,
                                 tiles_per_task, *dropout)
        ctx.save_for_backward(qc, kc, vc, mask_arg, out, z)
        ctx.config = (kernel_id, causal, scale, eps, block_q, block_k, *dropout)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        return out.to(q.dtype)

    @staticmethod
    @first_order_backward("backend 'cpp'")
    def backward(ctx, grad_out):
        qc, kc, vc, mask_arg, out, z = ctx.saved_tensors
        d_out = grad_out.to(out.dtype).contiguous()
        dq, dk, dv = _load().backward(d_out, qc, kc, vc, mask_arg, out, z, *ctx.config)
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        return (dq.to(q_dtype), dk.unsqueeze(2).to(k_dtype), dv.unsqueeze(2).to(v_dtype),
                None, None, None, None, None, None, None, None, None)


def _expanded_mask(mask: Tensor | None, q_shape: torch.Size, S: int) -> Tensor:
    """The bool mask as a stride-0 view of the full (N, H, G, L, S) shape (nothing is copied),
    or an empty tensor for no mask."""
    if mask is None:
        return torch.empty(0, dtype=torch.bool)
    return mask.expand(*q_shape[:-1], S)


def cpp_attention(problem: Problem, *, block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K,
                  tiles_per_task: int = DEFAULT_TILES_PER_TASK, _checked: bool = False) -> Tensor:
    """Attention on a canonical :class:`Problem` with the fused C++ kernels.

    ``_checked=True`` (the registry's run, after the front door's one refusal check) skips the
    kernel and refusal checks.

    Args:
        problem: the validated call (see :func:`refusal` for what is refused).
        block_q: queries per tile.
        block_k: keys per tile.
        tiles_per_task: query tiles per forward task (they share each block of k and v).

    Returns:
        (N, H_kv, G, L, D_v) in the input dtype.

    Raises:
        ValueError: a kernel other than expressive/squared/relu/relu2, an input :func:`refusal`
            refuses (not on CPU, or the kernels cannot be built), or a block size < 1.
        TypeError: a block size that is not an int.
    """
    check_int("block_q", block_q, 1)
    check_int("block_k", block_k, 1)
    check_int("tiles_per_task", tiles_per_task, 1)
    p = problem
    if not _checked:
        if not is_fused_kernel(p.kernel):
            raise ValueError(f"backend 'cpp' computes kernels {list(FUSED_KERNEL_IDS)}, got {p.kernel.name!r}")
        reason = refusal(p)
        if reason is not None:
            raise ValueError(reason)
    if p.q.numel() == 0 or p.k.shape[-2] == 0 or p.v.shape[-1] == 0:
        return chunked_attention(p)  # empty problems: nothing for the kernels to do
    # (dropout_p, keep threshold, seed's low and high 32-bit words), all 0 without dropout.
    dropout = ((p.dropout_p, dropout_threshold(p.dropout_p), p.dropout_seed & 0xFFFFFFFF, p.dropout_seed >> 32)
               if p.dropout_p > 0 else (0.0, 0, 0, 0))
    return _CppAttention.apply(p.q, p.k, p.v, p.mask, FUSED_KERNEL_IDS[p.kernel.name], p.is_causal, p.scale,
                               p.eps, block_q, block_k, tiles_per_task, dropout)
