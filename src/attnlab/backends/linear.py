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
covers the rest, O(L (C D + F D_v)) in all (the engine in :mod:`._features`, shared with the
feature approximations; inside a chunk the squared kernel is applied to the D-dimensional
scores instead of the F-dimensional features).

A mask can only be honoured in linear time when it is the same for every query (key padding):
a masked key's features are zeroed. A mask that varies over queries raises ``ValueError``.

Backward saves q, k, v and the state before each chunk (O(L/C F D_v) memory) and recomputes
each chunk's features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_int
from ..kernels import Kernel, get_kernel
from ._common import Problem, dropout_refusal, normalizer
from ._features import chunked_feature_attention

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

    Its record (``masks="key-padding"``, ``kernels=("squared",)``, no dropout) says the same to
    the front door, which calls this as its ``refuse`` hook only after those fields pass.
    """
    if not supports_linear(problem.kernel):
        return f"backend 'linear' supports only kernel 'squared', got {problem.kernel.name!r}"
    if problem.dropout_p > 0:  # dropout acts on single weights, which the features never form
        return dropout_refusal("linear", problem)
    if problem.mask is not None and problem.mask.shape[3] > 1:
        if not bool((problem.mask == problem.mask[..., :1, :]).all()):
            return _VARYING_MASK
    return None


_VARYING_MASK = (
    "attn_mask must be the same for every query with backend 'linear' (a key-padding mask, "
    "broadcastable to (B..., H, 1, S)); a mask that varies over queries needs a quadratic "
    "backend such as 'chunked'"
)


def linear_attention(problem: Problem, *, chunk_size: int = DEFAULT_CHUNK_SIZE, _checked: bool = False) -> Tensor:
    """Squared-kernel attention on a canonical :class:`Problem` through degree-2 features.

    ``_checked=True`` (the registry's run, after the front door's one refusal check) skips
    :func:`linear_refusal`.

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
    check_int("chunk_size", chunk_size, 1)
    reason = None if _checked else linear_refusal(problem)
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
    kernel = problem.kernel
    y = chunked_feature_attention(
        q * problem.scale, k, v1, phi_q=degree2_features, phi_k=degree2_features, is_causal=problem.is_causal,
        chunk_size=chunk_size, keep=keep, intra=lambda qs, kc: kernel.weights(qs @ kc.transpose(-1, -2)),
    )
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
            check_int(name, value, low)
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
