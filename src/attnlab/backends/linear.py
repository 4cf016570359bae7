"""The linear backend: exact attention under the squared kernel in time linear in the length.

With s = scale * q.k, the squared kernel's weight is an inner product of degree-2 features,

    s^2 = (scale q . k)^2 = <phi(scale q), phi(k)>,
    phi(x) = (x_i x_j * w_ij)_{i <= j},   w_ii = 1,  w_ij = sqrt(2) (i < j),

with F = D (D + 1) / 2 features. Appending a column of ones to the values, [v, 1], gives the
numerator and the normalizer of every query from one product with a (F, D_v + 1) state::

    P = sum_j phi(k_j) [v_j, 1]^T,    [num_i, z_i] = phi(scale q_i) P,    o_i = num_i / (z_i + eps)

(the same ``eps``, zero rows and fp32 accumulation as the ``reference`` backend). Non-causal
attention costs O((L + S) F D_v); causal attention walks chunks of C positions: inside a chunk
the causal triangle is applied to the quadratic scores, and the state of the chunks before it
covers the rest, O(L (C D + F D_v)) in all.

A mask can only be honoured in linear time when it is the same for every query (key padding):
a masked key's features are zeroed. A mask that varies over queries raises ``ValueError``.

The autograd Function saves q, k, v and the state before each chunk (O(L/C F D_v) memory) and
recomputes each chunk's features in backward, where autograd differentiates one chunk at a time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..kernels import Kernel, get_kernel
from ._common import Problem, causal_visible, fresh, normalizer, tile_weights

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "SquaredKernelState",
    "degree2_features",
    "linear_attention",
    "linear_refusal",
    "supports_linear",
]

#: Positions per chunk in the causal algorithm (and per block in the non-causal one).
DEFAULT_CHUNK_SIZE = 256


def supports_linear(kernel: Kernel) -> bool:
    """True only for the built-in ``squared`` kernel, the one with an exact degree-2 feature map."""
    return kernel is get_kernel("squared")


def degree2_features(x: Tensor) -> Tensor:
    """phi(x): (..., D) -> (..., D (D + 1) / 2) with <phi(x), phi(y)> = (x . y)^2.

    The features are x_i^2 and sqrt(2) x_i x_j for i < j, in row-major upper-triangle order.
    """
    D = x.shape[-1]
    i, j = torch.triu_indices(D, D, device=x.device)
    weight = torch.full(i.shape, math.sqrt(2.0), dtype=x.dtype, device=x.device).masked_fill_(i == j, 1.0)
    return x[..., i] * x[..., j] * weight


def linear_refusal(problem: Problem) -> str | None:
    """Why the linear backend refuses ``problem`` (None when it accepts it), without running it.

    This is the check a registry-wide ``Backend.accepts(problem)`` hook would call.
    """
    if not supports_linear(problem.kernel):
        return f"backend 'linear' supports only kernel 'squared', got {problem.kernel.name!r}"
    if problem.mask is not None and problem.mask.shape[3] > 1:
        if not bool((problem.mask == problem.mask[..., :1, :]).all()):
            return _VARYING_MASK
    return None


_VARYING_MASK = (
    "attn_mask must be the same for every query with backend 'linear' (a key-padding mask, "
    "broadcastable to (B..., H, 1, S)); a mask that varies over queries needs a quadratic "
    "backend such as 'chunked'"
)


def _chunk_output(qs, k, v1, state, keep, kernel, causal, i0, i1):
    """[num, z] of queries i0:i1: their chunk's keys through the kernel (causal triangle and key
    mask applied), plus the features of the queries times the state of the earlier chunks."""
    y = degree2_features(qs) @ state
    if causal and k.shape[-2] > 0:
        s = qs @ k.transpose(-1, -2)
        visible = causal_visible(i0, i1, i0 + k.shape[-2], qs.device)[:, i0:]
        if keep is not None:
            visible = visible & (keep.transpose(-1, -2) > 0)
        a, _ = tile_weights(kernel, s, visible)
        y = y + a @ v1
    return y


def _chunk_state(k, v1, keep):
    """The state increment phi(k)^T [v, 1] of a chunk's keys, masked keys zeroed."""
    f = degree2_features(k)
    if keep is not None:
        f = f * keep
    return f.transpose(-1, -2) @ v1


class _LinearSquared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qs, k, v1, keep, kernel, causal, chunk):
        L, S = qs.shape[-2], k.shape[-2]
        F = k.shape[-1] * (k.shape[-1] + 1) // 2
        g_state = keep.shape[2] if keep is not None else 1
        state = qs.new_zeros((*k.shape[:2], g_state, F, v1.shape[-1]))
        y = fresh((*qs.shape[:-1], v1.shape[-1]), qs)
        states = []
        if causal:
            for i0 in range(0, L, chunk):
                i1, j1 = min(L, i0 + chunk), min(S, i0 + chunk)
                kc, vc = k[..., i0:j1, :], v1[..., i0:j1, :]
                kp = keep[..., i0:j1, :] if keep is not None else None
                states.append(state)
                y[..., i0:i1, :] = _chunk_output(qs[..., i0:i1, :], kc, vc, state, kp, kernel, True, i0, i1)
                if i0 < S:
                    state = state + _chunk_state(kc, vc, kp)
        else:
            for j0 in range(0, S, chunk):
                kp = keep[..., j0:j0 + chunk, :] if keep is not None else None
                state = state + _chunk_state(k[..., j0:j0 + chunk, :], v1[..., j0:j0 + chunk, :], kp)
            for i0 in range(0, L, chunk):
                y[..., i0:i0 + chunk, :] = degree2_features(qs[..., i0:i0 + chunk, :]) @ state
            states.append(state)
        if not states:  # no queries: backward still needs the state's shape
            states.append(state)
        ctx.save_for_backward(qs, k, v1, keep, *states)
        ctx.config = (kernel, causal, chunk)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        qs, k, v1, keep, *states = ctx.saved_tensors
        kernel, causal, chunk = ctx.config
        L, S = qs.shape[-2], k.shape[-2]
        dq, dk, dv1 = torch.zeros_like(qs), torch.zeros_like(k), torch.zeros_like(v1)
        # carry = d(loss)/d(state) summed over the chunks after the current one.
        carry = torch.zeros_like(states[0])
        if not causal:
            for i0 in range(0, L, chunk):
                qc = qs[..., i0:i0 + chunk, :].detach().requires_grad_(True)
                with torch.enable_grad():
                    f = degree2_features(qc)
                    (dq[..., i0:i0 + chunk, :],) = torch.autograd.grad(f, qc, dy[..., i0:i0 + chunk, :] @ states[0].mT)
                carry = carry + _reduce_groups(f.detach().mT @ dy[..., i0:i0 + chunk, :], carry)
            for j0 in range(0, S, chunk):
                _state_backward(k, v1, keep, carry, dk, dv1, j0, min(S, j0 + chunk))
            return dq, dk, dv1, None, None, None, None
        starts = list(range(0, L, chunk))
        for c in reversed(range(len(starts))):
            i0 = starts[c]
            i1, j1 = min(L, i0 + chunk), min(S, i0 + chunk)
            if i0 < S:
                _state_backward(k, v1, keep, carry, dk, dv1, i0, j1)
            qc, kc, vc = (t[..., i0:i1 if t is qs else j1, :].detach().requires_grad_(True) for t in (qs, k, v1))
            kp = keep[..., i0:j1, :] if keep is not None else None
            with torch.enable_grad():
                y = _chunk_output(qc, kc, vc, states[c], kp, kernel, True, i0, i1)
                grads = torch.autograd.grad(y, (qc, kc, vc), dy[..., i0:i1, :], allow_unused=True)
            dq[..., i0:i1, :] = grads[0]
            for acc, g in ((dk, grads[1]), (dv1, grads[2])):
                if g is not None:
                    acc[..., i0:j1, :] += _reduce_groups(g, acc[..., i0:j1, :])
            carry = carry + _reduce_groups(degree2_features(qs[..., i0:i1, :]).mT @ dy[..., i0:i1, :], carry)
        return dq, dk, dv1, None, None, None, None


def _reduce_groups(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a gradient over the dims in which ``like`` is broadcast (size 1)."""
    dims = [d for d in range(grad.dim()) if like.shape[d] == 1 and grad.shape[d] != 1]
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def _state_backward(k, v1, keep, carry, dk, dv1, j0, j1):
    """Accumulate into dk, dv1 the gradient of keys j0:j1 through their state increment."""
    kc, vc = k[..., j0:j1, :].detach().requires_grad_(True), v1[..., j0:j1, :].detach().requires_grad_(True)
    kp = keep[..., j0:j1, :] if keep is not None else None
    with torch.enable_grad():
        u = _chunk_state(kc, vc, kp)
        gk, gv = torch.autograd.grad(u, (kc, vc), carry)
    dk[..., j0:j1, :] += gk
    dv1[..., j0:j1, :] += gv


def linear_attention(problem: Problem, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Squared-kernel attention on a canonical :class:`Problem` through degree-2 features.

    Args:
        problem: the validated call; its kernel must be ``squared``.
        chunk_size: positions per chunk (C): larger chunks do more quadratic work inside a
            chunk and store fewer states.

    Returns:
        (N, H_kv, G, L, D_v) in the input dtype, equal to the reference up to rounding.

    Raises:
        TypeError: ``chunk_size`` is not an int.
        ValueError: ``chunk_size`` < 1, the kernel is not ``squared``, or ``attn_mask`` varies
            over queries.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    reason = linear_refusal(problem)
    if reason is not None:
        raise ValueError(reason)
    dtype = problem.compute_dtype
    q, k, v = (t.to(dtype) for t in (problem.q, problem.k, problem.v))
    keep = None
    if problem.mask is not None:
        # Every query's row is the same (checked): (n, h, g, 1, S|1) -> (n, h, g, S, 1), one
        # multiplier per key, applied to its features and to its weights inside a chunk.
        rows = problem.mask[..., :1, :]
        keep = rows.expand(*rows.shape[:-1], k.shape[-2]).transpose(-1, -2).to(dtype)
    v1 = torch.cat([v, v.new_ones((*v.shape[:-1], 1))], dim=-1)
    y = _LinearSquared.apply(q * problem.scale, k, v1, keep, problem.kernel, problem.is_causal, chunk_size)
    # Rounding in the feature products can leave a tiny negative z where the exact one is ~0.
    z = normalizer(problem.kernel, y[..., -1:].clamp_min(0.0), problem.eps)
    return (y[..., :-1] / z).to(problem.q.dtype)


class SquaredKernelState:
    """O(1)-per-token recurrent state of causal squared-kernel attention, for decoding.

    Holds P = sum_j phi(k_j) [v_j, 1]^T over the tokens seen so far, per (batch, head), so that
    ``query(q)`` returns sum_j s_j^2 v_j / (sum_j s_j^2 + eps) with s_j = scale * q.k_j: the
    output of causal ``attention(..., kernel="squared")`` at the newest position. Memory and
    time per token are O(D^2 D_v), independent of the number of tokens.

    Args:
        batch_size: N.
        num_heads: H (one state per head; with GQA, give each query head its key/value head).
        head_dim: D of queries and keys.
        value_dim: D_v.
        scale: score scale, default 1/sqrt(D).
        eps: added to the normalizer, >= 0.
        dtype: the state's dtype (float32 or float64); inputs are cast to it.
        device: the state's device.

    Raises:
        ValueError: a size < 1 (batch_size may be 0), a non-positive scale or a negative eps.
        TypeError: dtype is not float32 or float64.
    """

    def __init__(
        self, batch_size: int, num_heads: int, head_dim: int, value_dim: int, *, scale: float | None = None,
        eps: float = 1e-6, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    ) -> None:
        for name, value, low in (("batch_size", batch_size, 0), ("num_heads", num_heads, 1),
                                 ("head_dim", head_dim, 1), ("value_dim", value_dim, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"scale must be finite and > 0, got {scale}")
        if not eps >= 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        self.scale, self.eps, self.dtype, self.head_dim = float(scale), float(eps), dtype, head_dim
        features = head_dim * (head_dim + 1) // 2
        self.state = torch.zeros(batch_size, num_heads, features, value_dim + 1, dtype=dtype, device=device)
        self.tokens = 0

    def _check(self, name: str, x: Tensor, dim: int) -> Tensor:
        want = (*self.state.shape[:2], dim)
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape) != want:
            raise ValueError(f"{name} must have shape (N, H, {dim}) = {want}, got {tuple(x.shape)}")
        return x.to(self.dtype)

    def update(self, k: Tensor, v: Tensor) -> None:
        """Add one token: k (N, H, D), v (N, H, D_v)."""
        k, v = self._check("k", k, self.head_dim), self._check("v", v, self.state.shape[-1] - 1)
        v1 = torch.cat([v, v.new_ones((*v.shape[:-1], 1))], dim=-1)
        self.state = self.state + degree2_features(k)[..., :, None] * v1[..., None, :]
        self.tokens += 1

    def query(self, q: Tensor) -> Tensor:
        """Output for q (N, H, D) against every token added so far: (N, H, D_v), in q's dtype."""
        qc = self._check("q", q, self.head_dim)
        y = (degree2_features(qc * self.scale)[..., None, :] @ self.state)[..., 0, :]
        z = normalizer(get_kernel("squared"), y[..., -1:].clamp_min(0.0), self.eps)
        return (y[..., :-1] / z).to(q.dtype)
