"""The flex backend: any attnlab kernel through torch's FlexAttention.

FlexAttention computes ``softmax(score_mod(s))`` over the keys a ``block_mask`` keeps, and can
return the row's log-sum-exp. For a non-exponential kernel f, take score_mod = log f(s)::

    softmax_j(log f(s_j)) = f(s_j) / Z,   Z = sum_j f(s_j) = exp(lse)

which is attnlab's weight without the ``eps``; the ``eps`` is restored with one factor per query,

    o = o_flex * Z / (Z + eps),

which also sends a row whose weights are all zero (Z = 0) to a zero output (through
:func:`~attnlab.backends._common.normalizer`). Masked keys and the causal triangle go through
``mask_mod`` / ``block_mask``, so a masked score never enters f. The softmax kernel uses no
score_mod and no correction.

On the "+N" of the issue, score_mod = log(f(s) + N): adding N to every weight would change the
result (unless corrected with a second pass over the values), so it is not used. What a
stabilizer must prevent is log 0 = -inf: harmless in the forward, where the weight is exactly 0,
but its gradient f'/f is 0 * inf = NaN (e.g. the squared kernel at s = 0). attnlab floors the
weight instead, log(max(f(s), tiny)) with tiny the smallest normal number of the compute dtype
(1.2e-38 in fp32): a key with f(s) < tiny weighs tiny instead of f(s), an absolute change of
at most S * tiny / eps (< 1e-28 for S < 1e4) in the output, and the floor's gradient is 0.

Where it runs (torch 2.13, from its source): on CUDA with forward and backward, compiled with
``torch.compile`` (used here on CUDA); on CPU the forward only, through an unfused fallback that
materializes the scores, and no backward ("FlexAttention does not support backward on CPU").
:func:`flex_unavailable_reason` says why it cannot run a call; the backend raises with it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ._common import Problem, dropout_refusal, first_order_only, normalizer

__all__ = ["flex_attention_backend", "flex_unavailable_reason"]


def _flex_module():
    try:
        from torch.nn.attention import flex_attention as module
    except ImportError:  # torch < 2.5
        return None
    return module


def flex_unavailable_reason(device: torch.device | str, *, needs_grad: bool) -> str | None:
    """Why the flex backend cannot run on ``device`` (None when it can).

    Args:
        device: where q, k, v live.
        needs_grad: whether gradients will be taken.
    """
    device = torch.device(device)
    if _flex_module() is None:
        return f"backend 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5), torch is {torch.__version__}"
    if device.type not in ("cuda", "cpu"):
        return f"backend 'flex' runs on cuda or cpu, got device {device.type!r}"
    if device.type == "cpu" and needs_grad:
        return (
            "backend 'flex' cannot compute gradients on cpu (torch FlexAttention has no CPU backward): "
            "use inputs with requires_grad=False or torch.no_grad(), or backend 'chunked'"
        )
    return None


@functools.cache
def _compiled_flex():
    """torch.compile(flex_attention), built once (CUDA only: the fused Triton kernels)."""
    return torch.compile(_flex_module().flex_attention, dynamic=False)


@functools.lru_cache(maxsize=64)
def _score_mod(kernel, dtype: torch.dtype):
    """log max(f(s), tiny), one function object per (kernel, dtype) so compiled code is reused."""
    tiny = torch.finfo(dtype).tiny

    def log_weight(score, b, h, q_idx, kv_idx):
        return torch.log(torch.clamp_min(kernel.weights(score), tiny))

    return log_weight


def _block_mask(problem: Problem, G: int, L: int, S: int):
    """The BlockMask of the user mask AND the causal triangle, or None if every key is visible."""
    mask, causal = problem.mask, problem.is_causal
    if mask is None and not causal:
        return None
    N, Hkv = problem.q.shape[:2]
    full = mask.expand(N, Hkv, G, L, S) if mask is not None else None

    def mask_mod(b, h, q_idx, kv_idx):
        keep = kv_idx <= q_idx if causal else torch.ones_like(q_idx, dtype=torch.bool)
        if full is not None:
            keep = keep & full[b, h // G, h % G, q_idx, kv_idx]
        return keep

    # Broadcast batch/head dims of the mask need no copy in the block mask.
    B = None if mask is None or mask.shape[0] == 1 else N
    H = None if mask is None or mask.shape[1] == mask.shape[2] == 1 else Hkv * G
    return _flex_module().create_block_mask(mask_mod, B, H, L, S, device=problem.q.device)


def flex_attention_backend(problem: Problem, *, compile: bool | None = None) -> Tensor:
    """Attention on a canonical :class:`Problem` through ``flex_attention``.

    Args:
        problem: the validated call.
        compile: use ``torch.compile(flex_attention)`` (fused kernels); default: on CUDA only.

    Returns:
        (N, H_kv, G, L, D_v) in the input dtype.

    Raises:
        ValueError: FlexAttention cannot run this call here (see :func:`flex_unavailable_reason`),
            ``compile=True`` on cpu, or dropout_p > 0 (not supported).
    """
    q, k, v = problem.q, problem.k, problem.v
    if problem.dropout_p > 0:
        raise ValueError(dropout_refusal("flex", problem))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    reason = flex_unavailable_reason(q.device, needs_grad=needs_grad)
    if reason is not None:
        raise ValueError(reason)
    if compile and q.device.type == "cpu":
        raise ValueError("compile=True needs a cuda device with backend 'flex', got cpu")
    N, Hkv, G, L, D = q.shape
    S, Dv = v.shape[-2:]
    if q.numel() == 0 or S == 0:
        # Nothing to attend to: zero rows, still connected to the inputs for autograd.
        zero = (q.sum() + k.sum() + v.sum()) * 0
        return q.new_zeros((N, Hkv, G, L, Dv)) + zero
    kernel = problem.kernel
    use_compile = q.device.type == "cuda" if compile is None else compile
    flex = _compiled_flex() if use_compile else _flex_module().flex_attention
    dtype = problem.compute_dtype
    out, aux = flex(
        q.reshape(N, Hkv * G, L, D),
        k[:, :, 0],
        v[:, :, 0],
        score_mod=None if kernel.exponential else _score_mod(kernel, dtype),
        block_mask=_block_mask(problem, G, L, S),
        scale=problem.scale,
        enable_gqa=G > 1,
        return_aux=_flex_module().AuxRequest(lse=True),
    )
    out = out.reshape(N, Hkv, G, L, Dv)
    if not kernel.exponential:
        z = aux.lse.to(dtype).exp().reshape(N, Hkv, G, L, 1)
        out = (out.to(dtype) * (z / normalizer(kernel, z, problem.eps))).to(q.dtype)
    return first_order_only(out, "backend 'flex'")  # FlexAttention has no double backward
