"""The ``triton`` backend (fused Triton kernels) against the float64 reference, with gradients.

The kernels run on CUDA where there is a GPU, and otherwise in Triton's CPU interpreter, which
tests/conftest.py switches on (TRITON_INTERPRET=1) before triton is imported. The interpreter
runs the same kernel code with numpy, so it checks indexing, masking, loop bounds and the
formulas, not GPU code generation or speed; one test compiles the kernels for an H100 (no GPU
needed) so that what only the compiler sees is checked too. Without triton installed every test
here is skipped.
The record-driven sweeps (test_attention.py, test_edge_cases.py) compare ``triton`` with the float64
reference in every dtype and on every device its record takes (float32/bf16/fp16; CUDA, or CPU under
the interpreter) and assert its float64 refusal; this file keeps what is particular to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import attnlab
from attnlab.backends import available_backends, cpp, get_backend, resolve_backend
from attnlab.functional import canonicalize
from attnlab.kernels import register_kernel, unregister_kernel
from attnlab.testing import assert_close
from cases import Case

if "triton" not in available_backends():
    pytest.skip("backend 'triton' is not registered: triton is not installed, or there is neither CUDA nor "
                "TRITON_INTERPRET=1", allow_module_level=True)

from attnlab.backends import triton_kernels  # imports triton

DEVICE = "cuda" if torch.cuda.is_available() and not triton_kernels.INTERPRETED else "cpu"
KERNELS = ["expressive", "squared", "relu", "relu2"]
#: What auto runs for these kernels on CPU: the fused C++ kernels where they build.
CPU_AUTO = "cpp" if cpp.build_error() is None else "chunked"


def _to_device(q, k, v, mask):
    q, k, v = (t.detach().to(DEVICE).requires_grad_() for t in (q, k, v))
    return q, k, v, None if mask is None else mask.to(DEVICE)


def _run(case: Case, q, k, v, mask, kernel: str, backend: str = "triton", **kw):
    return attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, is_causal=case.causal, enable_gqa=case.gqa,
                             backend=backend, **kw)


def _reference(case: Case, kernel: str, upstream_seed: int = 7):
    """float64 output and q/k/v gradients for a random upstream gradient (all on CPU)."""
    q, k, v, mask = case.make(torch.float64, requires_grad=True)
    out = _run(case, q, k, v, mask, kernel, backend="reference")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    return out.detach(), torch.autograd.grad(out, (q, k, v), g), g


@pytest.mark.parametrize(("block_m", "block_n"), [(16, 16), (16, 32), (32, 16)])
def test_block_sizes_do_not_change_the_result(block_m, block_n):
    """Several query and key blocks per row, diagonal blocks that are not square."""
    case = Case(B=1, H=4, Hkv=2, L=37, S=37, causal=True, mask="random")
    q, k, v, mask = _to_device(*case.make(torch.float32))
    problem, shape = canonicalize(q, k, v, mask, True, None, True, 1e-6, attnlab.get_kernel("expressive"))
    out = triton_kernels.triton_attention(problem, block_m=block_m, block_n=block_n).reshape(shape)
    ref, ref_grads, g = _reference(case, "expressive")
    assert_close(out.cpu(), ref)
    grads = torch.autograd.grad(out, (q, k, v), g.to(DEVICE, torch.float32))
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert_close(got.cpu(), want, what=f"d{name}")


def test_non_contiguous_inputs_and_a_broadcast_upstream_gradient():
    """q/k/v as (B, L, H, D) transposed views; out.sum() gives a stride-0 upstream gradient."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 19, 2, 16, generator=g).to(DEVICE).transpose(1, 2).requires_grad_() for _ in range(3))
    mask = (torch.rand(19, 1, generator=g) > 0.2).expand(19, 19).to(DEVICE)  # a stride-0 mask dim
    out = attnlab.attention(q, k, v, kernel="squared", attn_mask=mask, is_causal=True, backend="triton")
    qd, kd, vd = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    ref = attnlab.attention(qd, kd, vd, kernel="squared", attn_mask=mask.cpu(), is_causal=True, backend="reference")
    assert_close(out.cpu(), ref.detach())
    for got, want in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (qd, kd, vd)),
                         strict=True):
        assert_close(got.cpu(), want)


@pytest.mark.parametrize("kernel", KERNELS)
def test_rows_without_weight_give_zero_output_and_finite_gradients(kernel):
    """Fully masked rows, and eps=0 with all weights zero (Z = 0 is replaced by 1)."""
    q, k, v = (torch.randn(2, 3, 5, 4, device=DEVICE, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 3, 5, 5, dtype=torch.bool, device=DEVICE)
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    out = attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, backend="triton")
    assert (out[0, 1, 2] == 0).all() and (out[1, :, 4] == 0).all()
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[0, 1, 2] == 0).all()
    zero_q = torch.zeros(1, 2, 3, 4, device=DEVICE, requires_grad=True)  # f(0) = 0 for these kernels
    out = attnlab.attention(zero_q, k[:1, :2], v[:1, :2], kernel=kernel, eps=0.0, backend="triton")
    assert (out == 0).all()
    out.sum().backward()
    assert torch.isfinite(zero_q.grad).all()


@pytest.mark.parametrize("kernel", ["expressive", "squared"])
def test_fp16_scores_beyond_fp16_range(kernel):
    """|s| ~ 1e3-1e4: s^2 overflows fp16 (max 65504) unless formed, and multiplied, in fp32."""
    g = torch.Generator().manual_seed(0)
    q, k = ((torch.randn(1, 2, 9, 16, generator=g) * 40).half() for _ in range(2))
    v = torch.randn(1, 2, 9, 16, generator=g).half()
    q, k, v, _ = _to_device(q, k, v, None)
    out = attnlab.attention(q, k, v, kernel=kernel, is_causal=True, backend="triton")
    ref = attnlab.attention(*(t.detach().cpu().double() for t in (q, k, v)), kernel=kernel, is_causal=True,
                            backend="reference")
    assert torch.isfinite(out).all()
    assert (out.cpu().double() - ref).abs().max() < 1e-2
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("kernel", KERNELS)
@torch.no_grad()
def test_invariances(kernel):
    """causal == explicit triangle; GQA == repeated k/v heads; padded batch == per sequence."""
    q, k, v, mask = (t.to(DEVICE) for t in Case(B=1, H=6, Hkv=2, L=19, S=23, mask="random").make(torch.float32))
    tri = torch.ones(19, 23, dtype=torch.bool, device=DEVICE).tril()

    def run(*args, **kw):
        return attnlab.attention(*args, kernel=kernel, backend="triton", **kw)

    assert_close(run(q, k, v, is_causal=True, enable_gqa=True), run(q, k, v, attn_mask=tri, enable_gqa=True).double())
    kr, vr = (x.repeat_interleave(3, dim=1) for x in (k, v))
    assert_close(run(q, k, v, attn_mask=mask, enable_gqa=True), run(q, kr, vr, attn_mask=mask).double())
    lengths = [5, 9, 2]
    q, k, v = (torch.randn(3, 2, 9, 8, generator=torch.Generator().manual_seed(3)).to(DEVICE) for _ in range(3))
    pad = (torch.arange(9)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :].to(DEVICE)
    out = run(q, k, v, attn_mask=pad, is_causal=True)
    for b, n in enumerate(lengths):
        alone = run(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], is_causal=True)
        assert_close(out[b:b + 1, :, :n], alone.double())


@pytest.mark.parametrize("shape", [(0, 2, 5, 4), (2, 2, 0, 4)], ids=["empty-batch", "no-queries"])
def test_empty_inputs(shape):
    q = torch.randn(shape, device=DEVICE, requires_grad=True)
    k, v = torch.randn(shape[0], 2, 5, 4, device=DEVICE), torch.randn(shape[0], 2, 5, 3, device=DEVICE)
    out = attnlab.attention(q, k, v, kernel="expressive", backend="triton")
    assert out.shape == (*shape[:-1], 3)


def test_no_keys_gives_zeros_and_zero_gradients():
    q = torch.randn(1, 2, 3, 4, device=DEVICE, requires_grad=True)
    k, v = torch.randn(1, 2, 0, 4, device=DEVICE), torch.randn(1, 2, 0, 5, device=DEVICE)
    out = attnlab.attention(q, k, v, kernel="relu2", backend="triton")
    assert out.shape == (1, 2, 3, 5) and (out == 0).all()
    out.sum().backward()
    assert (q.grad == 0).all()


def _problem(q, k, v, kernel="expressive"):
    return canonicalize(q, k, v, None, False, None, False, 1e-6, attnlab.get_kernel(kernel))[0]


def test_refusals_name_the_reason():
    backend = get_backend("triton")
    q = torch.randn(1, 2, 4, 8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"does not support float64.*use backend 'chunked'"):
        attnlab.attention(q, q, q, kernel="expressive", backend="triton")
    wide = torch.randn(1, 1, 4, 129, device=DEVICE)
    with pytest.raises(ValueError, match=r"head dims up to 128.*D=129"):
        attnlab.attention(wide, wide, wide, kernel="expressive", backend="triton")
    with pytest.raises(ValueError, match="does not support kernel 'softmax'"):
        attnlab.attention(q.float(), q.float(), q.float(), backend="triton")
    register_kernel("abs3-triton", lambda s: s.abs() ** 3)
    try:
        assert not backend.supports(attnlab.get_kernel("abs3-triton"))
    finally:
        unregister_kernel("abs3-triton")
    # A Kernel object that merely borrows a built-in's name is not the compiled formula.
    assert not backend.supports(attnlab.kernels.Kernel("squared", torch.abs))
    assert backend.refusal(_problem(q.float(), q.float(), q.float())) is None
    problem = _problem(q.float(), q.float(), q.float())
    with pytest.raises(ValueError, match="block_m must be a power of two >= 16"):
        triton_kernels.triton_attention(problem, block_m=24)
    with pytest.raises(ValueError, match="block_n must be a power of two >= 16"):
        triton_kernels.triton_attention(problem, block_n=8)


def test_cpu_tensors_are_refused_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_kernels, "INTERPRETED", False)
    q = torch.randn(1, 2, 4, 8)
    reason = get_backend("triton").refusal(_problem(q, q, q))
    assert reason is not None and "needs CUDA tensors, got cpu" in reason and "'chunked'" in reason


def _fake_problem(device: str, dtype: torch.dtype, D: int = 64, kernel: str = "expressive", dropout_p: float = 0.0):
    """A Problem whose tensors only answer device/dtype/shape: enough for resolve_backend."""
    t = SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(1, 1, 1, 8, D))
    return SimpleNamespace(q=t, k=t, v=t, mask=None, kernel=attnlab.get_kernel(kernel), dropout_p=dropout_p,
                           dropout_seed=0, is_causal=False)


def test_auto_picks_triton_for_cuda_inputs_it_accepts(monkeypatch):
    """The rule of resolve_backend, checked without a GPU through tensors that only say 'cuda'."""
    monkeypatch.setattr(attnlab.backends, "_triton_interpreter_requested", lambda: False)
    kern = attnlab.get_kernel
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for kernel in KERNELS:
            assert resolve_backend(kern(kernel), problem=_fake_problem("cuda", dtype, kernel=kernel)).name == "triton"
    assert resolve_backend(kern("expressive"), problem=_fake_problem("cuda", torch.float64)).name == "chunked"
    assert resolve_backend(kern("expressive"), problem=_fake_problem("cuda", torch.float16, D=256)).name == "chunked"
    assert resolve_backend(kern("expressive"), problem=_fake_problem("cpu", torch.float32)).name == CPU_AUTO
    softmax = _fake_problem("cuda", torch.float16, kernel="softmax")
    assert resolve_backend(kern("softmax"), problem=softmax).name == "sdpa"
    # dropout: triton and sdpa refuse it, so auto takes chunked
    for kernel in ("expressive", "softmax"):
        dropout = _fake_problem("cuda", torch.float16, kernel=kernel, dropout_p=0.1)
        assert resolve_backend(kern(kernel), problem=dropout).name == "chunked"
    problem = _fake_problem("cuda", torch.float16)
    assert resolve_backend(kern("expressive"), return_weights=True, problem=problem).name == "reference"
    assert resolve_backend(kern("expressive")).name == "chunked"  # no problem given


def test_auto_keeps_triton_off_cpu_and_off_the_interpreter(monkeypatch):
    q = torch.randn(1, 2, 5, 8)
    assert resolve_backend(attnlab.get_kernel("squared"), problem=_problem(q, q, q, "squared")).name == CPU_AUTO
    monkeypatch.setattr(attnlab.backends, "_triton_interpreter_requested", lambda: True)
    problem = _fake_problem("cuda", torch.float16)
    assert resolve_backend(attnlab.get_kernel("expressive"), problem=problem).name == "chunked"


# Compiles the three kernels for an H100 (sm_90) down to a cubin with triton's bundled ptxas: the
# interpreter runs the kernels' Python, but only the compiler checks what a GPU would run
# (types, layouts, shared memory). Needs no GPU; runs in a subprocess with the interpreter off.
_COMPILE_FOR_SM90 = """
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from attnlab.backends import triton_kernels as tk

types = {"Q": "*{t}", "K": "*{t}", "V": "*{t}", "O": "*{t}", "DO": "*{t}", "DQ": "*{t}", "DK": "*{t}",
         "DV": "*{t}", "M": "*u8", "Z": "*fp32", "DELTA": "*fp32", "scale": "fp32", "eps": "fp32"}
# bf16 (weights cast to bf16): all three kernels; fp16 (fp32 weight operands, tf32): the dk/dv one.
cases = [("bf16", 0, 1, fn) for fn in (tk._forward_kernel, tk._dkdv_kernel, tk._dq_kernel)]
for dtype, kernel, wmode, fn in cases + [("fp16", 3, 0, tk._dkdv_kernel)]:
    config = dict(KERNEL=kernel, CAUSAL=True, HAS_MASK=True, WMODE=wmode, PRECISION="tf32", BLOCK_M=64,
                  BLOCK_N=64, BLOCK_D=64, BLOCK_DV=32)
    signature = {a: "constexpr" if a in config else types.get(a, "i32").format(t=dtype) for a in fn.arg_names}
    compiled = triton.compile(ASTSource(fn, signature, config), target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"], fn.__name__
    print(dtype, fn.__name__, compiled.metadata.shared)
"""


def test_kernels_compile_for_a_gpu(tmp_path):
    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("this triton has no bundled ptxas for the NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, and leave no cache behind
    out = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(out.stdout.split()) == 4 * 3


def test_import_attnlab_does_not_import_triton():
    code = "import sys, attnlab; print('triton' in sys.modules, 'triton' in attnlab.backends.available_backends())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.split() == ["False", "True"]
