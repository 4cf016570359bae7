"""The triton backend: fused Triton kernels for the non-exponential kernels, forward and backward.

Semantics are the reference backend's (see ``reference.py``): for query i and the keys j it may
see (mask True and, under ``is_causal``, j <= i),

    s_ij = scale * q_i . k_j,   w_ij = f(s_ij),   Z_i = sum_j w_ij + eps (1 when <= 0),
    o_i  = sum_j w_ij v_j / Z_i.

**Forward** (``_forward_kernel``): one program per (batch * kv head * query group, block of
queries). It loops over blocks of keys, forms the score tile in fp32 (``tl.dot``), applies f,
zeroes keys that are out of range, masked (the boolean mask is loaded tile by tile through its
strides: broadcast dims have stride 0, nothing is copied) or in the causal future, and
accumulates ``sum_j w_ij v_j`` and ``sum_j w_ij`` in fp32 registers; the (L, S) matrix never
exists. Under ``is_causal`` the loop stops at the diagonal block, skipping the key blocks above
it. There is no running maximum: f is not exponential, so nothing overflows that fp32 holds. It
writes o (input dtype) and Z (fp32, saved for the backward).

**Backward**, FlashAttention-2 style, recomputing the scores from q, k and the saved Z. With
D_i = dO_i . o_i (computed once with torch, one fp32 number per query)::

    p_ij  = w_ij / Z_i
    dw_ij = (dO_i . v_j - D_i) / Z_i            (through o_i's numerator and Z_i; dZ_i/dw_ij = 1)
    ds_ij = dw_ij f'(s_ij), 0 where not visible
    dv_j  = sum_i p_ij dO_i,   dk_j = scale sum_i ds_ij q_i,   dq_i = scale sum_j ds_ij k_j

``_dkdv_kernel`` runs one program per (batch * kv head, block of keys) and loops over the G query
heads that share the kv head and over their query blocks (under ``is_causal`` only those at or
below the diagonal), so grouped-query attention needs no atomics; ``_dq_kernel`` runs one program
per (batch * kv head * query group, block of queries) and loops over key blocks, recomputing the
scores a second time (FlashAttention-2's choice: no atomic adds into dq).

**Kernels** (chosen by a ``tl.constexpr`` id, closed-form derivatives; |s| is clamped at 1e18
for EA only, where f is 1 and f' is 0 in fp32 anyway, so that s^2 cannot overflow to inf/inf):

    expressive  f = s^2 / (1 + s^2)   f' = 2 s / (1 + s^2)^2
    squared     f = s^2               f' = 2 s
    relu        f = max(s, 0)         f' = 1 if s > 0 else 0
    relu2       f = max(s, 0)^2       f' = 2 max(s, 0)

**Precision.** Scores, weights, normalizers and every accumulator are fp32. The products with
weights or score gradients (w v, p^T dO, ds^T q, ds k) take their operands in bf16 for bf16
inputs (bf16 has fp32's range); for fp16 inputs they take fp32 operands (tf32 on the GPU's
tensor cores) because an unnormalized weight of an unbounded kernel (s^2 > 65504 for |s| > 256)
or a score gradient divided by a small Z can overflow fp16; fp32 inputs use exact fp32 products
(``input_precision="ieee"``, no tf32). Triton's CPU interpreter multiplies bf16 *bit patterns*
in ``tl.dot`` (triton issue #11584) and truncates fp32 -> bf16 casts, so under it bf16 tiles are
upcast to fp32 after loading and weights/results are rounded to bf16 (ties to even) by integer
arithmetic: the GPU's bf16 numerics, up to the order of summation.

**Refused** (``accepts`` in ``attnlab.backends``): float64 (the kernels accumulate in fp32; use
backend 'chunked'), tensors that are not on CUDA while Triton's interpreter is off, and head dims
over 128 (the tiles hold a whole head dim in registers; dims up to 128 are padded to a power of
two, at least 16). softmax and user-registered kernels are not supported: their f is not
compiled into these kernels (use 'sdpa' or 'chunked').

This module imports triton; ``attnlab.backends`` imports it only when the backend first runs.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import FUSED_KERNEL_IDS, Problem, first_order_backward, fresh

__all__ = ["INTERPRETED", "triton_attention"]


@triton.jit
def _weight(s, KERNEL: tl.constexpr):
    """f(s) elementwise, fp32."""
    if KERNEL == 0:  # expressive
        sc = tl.minimum(tl.maximum(s, -1e18), 1e18)
        t = sc * sc
        return t / (1.0 + t)
    elif KERNEL == 1:  # squared
        return s * s
    elif KERNEL == 2:  # relu
        return tl.maximum(s, 0.0)
    else:  # relu2
        r = tl.maximum(s, 0.0)
        return r * r


@triton.jit
def _derivative(s, KERNEL: tl.constexpr):
    """f'(s) elementwise, fp32."""
    if KERNEL == 0:
        sc = tl.minimum(tl.maximum(s, -1e18), 1e18)
        u = 1.0 / (1.0 + sc * sc)
        return 2.0 * sc * u * u
    elif KERNEL == 1:
        return 2.0 * s
    elif KERNEL == 2:
        return tl.where(s > 0.0, 1.0, 0.0)
    else:
        return 2.0 * tl.maximum(s, 0.0)


@triton.jit
def _load_tile(base, rows, cols, stride_r, stride_c, n_rows, n_cols, WMODE: tl.constexpr):
    """The (rows, cols) tile of a q/k/v/dO matrix, zero outside (n_rows, n_cols), as a tl.dot
    operand: fp32 under WMODE 2 (bf16 in the interpreter, whose tl.dot multiplies bf16 bit
    patterns, triton issue #11584), else as stored."""
    x = tl.load(base + rows[:, None].to(tl.int64) * stride_r + cols[None, :] * stride_c,
                mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)
    if WMODE == 2:
        return x.to(tl.float32)
    else:
        return x


@triton.jit
def _round_to_bf16(x):
    """fp32 x rounded to the nearest bf16 (ties to even), kept in fp32: what a GPU's conversion
    does. The interpreter's own fp32 -> bf16 cast truncates, so WMODE 2 rounds here first."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _store_tile(base, rows, cols, stride_r, stride_c, n_rows, n_cols, x, WMODE: tl.constexpr):
    """Store the fp32 tile x, converted to the tensor's dtype, inside (n_rows, n_cols)."""
    if WMODE == 2:
        x = _round_to_bf16(x)
    tl.store(base + rows[:, None].to(tl.int64) * stride_r + cols[None, :] * stride_c, x.to(base.dtype.element_ty),
             mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))


@triton.jit
def _wdot(a, b, WMODE: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b for fp32 weights or score gradients ``a`` and an input tile ``b``: in b's dtype
    (WMODE 1: bf16), emulated in fp32 with ``a`` rounded to bf16 (WMODE 2: bf16 under the
    interpreter), or with fp32 operands (WMODE 0: fp32 inputs, and fp16, whose range 65504 an
    unnormalized weight may exceed)."""
    if WMODE == 1:
        return tl.dot(a.to(b.dtype), b, input_precision=PRECISION)
    elif WMODE == 2:
        return tl.dot(_round_to_bf16(a), b, input_precision=PRECISION)
    else:
        return tl.dot(a, b.to(tl.float32), input_precision=PRECISION)


@triton.jit
def _visible(rows, cols, L, S, mask_base, sml, sms, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """Bool (BLOCK_M, BLOCK_N): in range, allowed by the mask tile, not in the causal future."""
    vis = (rows[:, None] < L) & (cols[None, :] < S)
    if CAUSAL:
        vis = vis & (cols[None, :] <= rows[:, None])
    if HAS_MASK:
        # int64 row offsets: a full (L, S) mask has L * S > 2^31 elements from L = S = 46341 on.
        tile = tl.load(mask_base + rows[:, None].to(tl.int64) * sml + cols[None, :] * sms, mask=vis, other=0)
        vis = vis & (tile != 0)
    return vis


@triton.jit
def _forward_kernel(
    Q, K, V, M, O, Z,
    sqn, sqh, sqg, sql, sqd,
    skn, skh, sks, skd,
    svn, svh, svs, svd,
    smn, smh, smg, sml, sms,
    son, soh, sog, sol, sod,
    Hkv, G, L, S, D, Dv, scale, eps,
    KERNEL: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, WMODE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)  # (n, h, g) flattened: axis 0 allows 2^31 - 1 programs
    pid_m = tl.program_id(1)
    n, h, g = pid_bh // (Hkv * G), (pid_bh // G) % Hkv, pid_bh % G
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims, vdims = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    q = _load_tile(Q + n * sqn + h * sqh + g * sqg, rows, dims, sql, sqd, L, D, WMODE)
    k_base, v_base = K + n * skn + h * skh, V + n * svn + h * svh
    mask_base = M + n * smn + h * smh + g * smg
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    # Causal: the key blocks above the diagonal block are never visited.
    hi = tl.minimum(S, (pid_m + 1) * BLOCK_M) if CAUSAL else S
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, cols, dims, sks, skd, S, D, WMODE)
        v = _load_tile(v_base, cols, vdims, svs, svd, S, Dv, WMODE)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        vis = _visible(rows, cols, L, S, mask_base, sml, sms, CAUSAL, HAS_MASK)
        w = tl.where(vis, _weight(s, KERNEL), 0.0)
        row_sum += tl.sum(w, axis=1)
        acc += _wdot(w, v, WMODE, PRECISION)
    z = row_sum + eps
    z = tl.where(z > 0.0, z, 1.0)
    out = acc / z[:, None]
    _store_tile(O + n * son + h * soh + g * sog, rows, vdims, sol, sod, L, Dv, out, WMODE)
    tl.store(Z + pid_bh * L + rows, z, mask=rows < L)


@triton.jit
def _dkdv_kernel(
    Q, K, V, M, DO, Z, DELTA, DK, DV,
    sqn, sqh, sqg, sql, sqd,
    skn, skh, sks, skd,
    svn, svh, svs, svd,
    smn, smh, smg, sml, sms,
    sdon, sdoh, sdog, sdol, sdod,
    sdkn, sdkh, sdks, sdkd,
    sdvn, sdvh, sdvs, sdvd,
    Hkv, G, L, S, D, Dv, scale,
    KERNEL: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, WMODE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_nh = tl.program_id(0).to(tl.int64)  # (n, h) flattened
    pid_n = tl.program_id(1)
    n, h = pid_nh // Hkv, pid_nh % Hkv
    start_n = pid_n * BLOCK_N
    cols = start_n + tl.arange(0, BLOCK_N)
    dims, vdims = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    k = _load_tile(K + n * skn + h * skh, cols, dims, sks, skd, S, D, WMODE)
    v = _load_tile(V + n * svn + h * svh, cols, vdims, svs, svd, S, Dv, WMODE)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    # Causal: only queries i >= start_n see this key block.
    lo = (start_n // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for g in range(0, G):  # the query heads sharing this kv head: no atomics for GQA
        q_base = Q + n * sqn + h * sqh + g * sqg
        do_base = DO + n * sdon + h * sdoh + g * sdog
        mask_base = M + n * smn + h * smh + g * smg
        row_base = (pid_nh * G + g) * L
        for start_m in range(lo, L, BLOCK_M):
            rows = start_m + tl.arange(0, BLOCK_M)
            q = _load_tile(q_base, rows, dims, sql, sqd, L, D, WMODE)
            do = _load_tile(do_base, rows, vdims, sdol, sdod, L, Dv, WMODE)
            inv_z = 1.0 / tl.load(Z + row_base + rows, mask=rows < L, other=1.0)
            delta = tl.load(DELTA + row_base + rows, mask=rows < L, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            vis = _visible(rows, cols, L, S, mask_base, sml, sms, CAUSAL, HAS_MASK)
            p = tl.where(vis, _weight(s, KERNEL), 0.0) * inv_z[:, None]
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = tl.where(vis, (dp - delta[:, None]) * inv_z[:, None] * _derivative(s, KERNEL), 0.0)
            dv += _wdot(tl.trans(p), do, WMODE, PRECISION)
            dk += _wdot(tl.trans(ds), q, WMODE, PRECISION)
    dk = dk * scale
    _store_tile(DK + n * sdkn + h * sdkh, cols, dims, sdks, sdkd, S, D, dk, WMODE)
    _store_tile(DV + n * sdvn + h * sdvh, cols, vdims, sdvs, sdvd, S, Dv, dv, WMODE)


@triton.jit
def _dq_kernel(
    Q, K, V, M, DO, Z, DELTA, DQ,
    sqn, sqh, sqg, sql, sqd,
    skn, skh, sks, skd,
    svn, svh, svs, svd,
    smn, smh, smg, sml, sms,
    sdon, sdoh, sdog, sdol, sdod,
    sdqn, sdqh, sdqg, sdql, sdqd,
    Hkv, G, L, S, D, Dv, scale,
    KERNEL: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, WMODE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    n, h, g = pid_bh // (Hkv * G), (pid_bh // G) % Hkv, pid_bh % G
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims, vdims = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    q = _load_tile(Q + n * sqn + h * sqh + g * sqg, rows, dims, sql, sqd, L, D, WMODE)
    do = _load_tile(DO + n * sdon + h * sdoh + g * sdog, rows, vdims, sdol, sdod, L, Dv, WMODE)
    inv_z = 1.0 / tl.load(Z + pid_bh * L + rows, mask=rows < L, other=1.0)
    delta = tl.load(DELTA + pid_bh * L + rows, mask=rows < L, other=0.0)
    k_base, v_base = K + n * skn + h * skh, V + n * svn + h * svh
    mask_base = M + n * smn + h * smh + g * smg
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = tl.minimum(S, (pid_m + 1) * BLOCK_M) if CAUSAL else S
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, cols, dims, sks, skd, S, D, WMODE)
        v = _load_tile(v_base, cols, vdims, svs, svd, S, Dv, WMODE)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        vis = _visible(rows, cols, L, S, mask_base, sml, sms, CAUSAL, HAS_MASK)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = tl.where(vis, (dp - delta[:, None]) * inv_z[:, None] * _derivative(s, KERNEL), 0.0)
        dq += _wdot(ds, k, WMODE, PRECISION)
    dq = dq * scale
    _store_tile(DQ + n * sdqn + h * sdqh + g * sdqg, rows, dims, sdql, sdqd, L, D, dq, WMODE)


def _interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - a triton without the interpreter
        return False
    return isinstance(_forward_kernel, InterpretedFunction)


#: Whether these kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 when triton was
#: first imported), which takes CPU tensors and checks semantics, not speed.
INTERPRETED = _interpreted()


def _config(problem: Problem, block_m: int | None, block_n: int | None) -> dict:
    """The constexprs and launch options shared by the three kernels."""
    D, Dv = problem.q.shape[-1], problem.v.shape[-1]
    block_d, block_dv = (max(16, triton.next_power_of_2(x)) for x in (D, Dv))
    default = 64 if max(block_d, block_dv) <= 64 else 32
    dtype = problem.q.dtype
    return {
        "KERNEL": FUSED_KERNEL_IDS[problem.kernel.name],
        "CAUSAL": problem.is_causal,
        "HAS_MASK": problem.mask is not None,
        "WMODE": (2 if INTERPRETED else 1) if dtype == torch.bfloat16 else 0,
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        "BLOCK_M": block_m or default,
        "BLOCK_N": block_n or default,
        "BLOCK_D": block_d,
        "BLOCK_DV": block_dv,
        # Launch options, not constexprs. fp32 tiles are twice as large: 2 pipeline stages keep
        # the dk/dv kernel under ~100 KB of shared memory (3 stages: 132 KB at D = 64, compiled
        # for sm_86), so it also fits GPUs smaller than an A100/H100. Untuned: no GPU here.
        "num_warps": 4,
        "num_stages": 2 if dtype == torch.float32 else 3,
    }


def _mask_args(q: Tensor, mask: Tensor | None, shape: tuple[int, ...]) -> tuple[Tensor, list[int]]:
    """The mask expanded to (N, H_kv, G, L, S) without a copy (stride 0 on broadcast dims), as
    uint8 for the kernels, and its strides; a placeholder pointer and zero strides without one."""
    if mask is None:
        return q, [0] * 5
    full = mask.expand(shape).view(torch.uint8)
    return full, list(full.stride())


def _on_device(t: Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current CUDA device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, config, scale, eps):
        N, Hkv, G, L, _ = q.shape
        S, Dv = v.shape[-2:]
        m, m_strides = _mask_args(q, mask, (N, Hkv, G, L, S))
        out = fresh((N, Hkv, G, L, Dv), q)
        z = fresh((N, Hkv, G, L), q, torch.float32)
        grid = (N * Hkv * G, triton.cdiv(L, config["BLOCK_M"]))
        if grid[0] * grid[1] > 0:
            with _on_device(q):
                _forward_kernel[grid](
                    q, k, v, m, out, z,
                    *q.stride(), k.stride(0), k.stride(1), k.stride(3), k.stride(4),
                    v.stride(0), v.stride(1), v.stride(3), v.stride(4), *m_strides, *out.stride(),
                    Hkv, G, L, S, q.shape[-1], Dv, scale, eps, **config,
                )
        ctx.save_for_backward(q, k, v, mask, out, z)
        ctx.config, ctx.scale = config, scale
        return out

    @staticmethod
    @first_order_backward("backend 'triton'")
    def backward(ctx, grad_out):
        q, k, v, mask, out, z = ctx.saved_tensors
        config, scale = ctx.config, ctx.scale
        N, Hkv, G, L, D = q.shape
        S, Dv = v.shape[-2:]
        m, m_strides = _mask_args(q, mask, (N, Hkv, G, L, S))
        # D_i = dO_i . o_i in fp32, one number per query (a torch reduction instead of a kernel).
        delta = (grad_out.float() * out.float()).sum(-1).contiguous()
        dq, dk, dv = fresh(q.shape, q), fresh(k.shape, k), fresh(v.shape, v)
        common = (*q.stride(), k.stride(0), k.stride(1), k.stride(3), k.stride(4),
                  v.stride(0), v.stride(1), v.stride(3), v.stride(4), *m_strides, *grad_out.stride())
        grid_kv = (N * Hkv, triton.cdiv(S, config["BLOCK_N"]))
        grid_q = (N * Hkv * G, triton.cdiv(L, config["BLOCK_M"]))
        with _on_device(q):
            if grid_kv[0] * grid_kv[1] > 0:
                _dkdv_kernel[grid_kv](
                    q, k, v, m, grad_out, z, delta, dk, dv, *common,
                    dk.stride(0), dk.stride(1), dk.stride(3), dk.stride(4),
                    dv.stride(0), dv.stride(1), dv.stride(3), dv.stride(4),
                    Hkv, G, L, S, D, Dv, scale, **config,
                )
            if grid_q[0] * grid_q[1] > 0:
                _dq_kernel[grid_q](
                    q, k, v, m, grad_out, z, delta, dq, *common, *dq.stride(),
                    Hkv, G, L, S, D, Dv, scale, **config,
                )
        return dq, dk, dv, None, None, None, None


def triton_attention(problem: Problem, *, block_m: int | None = None, block_n: int | None = None) -> Tensor:
    """Attention on a canonical :class:`Problem` with the fused Triton kernels.

    Args:
        problem: the validated call (see ``attnlab.backends`` for what it refuses).
        block_m: queries per tile, a power of two >= 16 (default 64, 32 for head dims over 64).
        block_n: keys per tile, likewise.

    Returns:
        (N, H_kv, G, L, D_v) in the input dtype.

    Raises:
        ValueError: a block size that is not a power of two >= 16.
    """
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if value is not None and (value < 16 or value & (value - 1)):
            raise ValueError(f"{name} must be a power of two >= 16 or None, got {value}")
    p = problem
    return _TritonAttention.apply(p.q, p.k, p.v, p.mask, _config(p, block_m, block_n), p.scale, p.eps)
