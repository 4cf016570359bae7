"""Low-rank attention: the Nystrom approximation of softmax attention (Xiong et al. 2021).

With m landmarks Q~ and K~, the segment means of the queries and of the keys (segment r holds
positions floor(r L / m) .. floor((r + 1) L / m) - 1, so lengths need not divide by m)::

    F = softmax(scale Q K~^T)   (L, m)
    A = softmax(scale Q~ K~^T)  (m, m)
    B = softmax(scale Q~ K^T)   (m, S)
    O = F A^+ (B V)

in O((L + S) m) memory and time. A^+ is, as in the paper, approximated by n iterations of
(Razavi et al. 2014), from Z_0 = A^T / (norm_1(A) norm_inf(A))::

    Z_{j+1} = Z_j (13 I - A Z_j (15 I - A Z_j (7 I - A Z_j))) / 4

(``pinv_iterations=None``: the exact ``torch.linalg.pinv``). Few iterations also regularize:
A is often ill-conditioned, and with the exact pseudo-inverse the error is erratic in m.
When m = L = S every segment is one token, F = A = B = P (the exact weights) and, with the
exact pseudo-inverse, O = P P^+ P V = P V: exact attention.
Neither ``is_causal`` nor ``attn_mask`` can be honoured (landmarks mix positions), and only
the softmax kernel is approximated; each raises a ValueError.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from ..backends import normalizer, tile_weights
from ..kernels import Kernel
from ..problem import AttentionProblem
from ..signature import attention_signature

__all__ = ["iterative_pinv", "nystrom", "nystrom_attention", "segment_means"]


def segment_means(x: Tensor, num_segments: int) -> Tensor:
    """(..., L, D) -> (..., m, D): the means of m contiguous, near-equal segments of positions.

    Raises:
        ValueError: ``num_segments`` is not in 1..L.
    """
    L = x.shape[-2]
    if not 1 <= num_segments <= L:
        raise ValueError(f"num_segments must be in 1..{L} (the length), got {num_segments}")
    bounds = torch.arange(1, num_segments + 1, device=x.device) * L // num_segments
    seg = torch.bucketize(torch.arange(L, device=x.device), bounds, right=True)  # (L,)
    avg = torch.nn.functional.one_hot(seg, num_segments).to(x.dtype).T  # (m, L)
    avg = avg / avg.sum(dim=-1, keepdim=True)
    return avg @ x


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """The Nystromformer approximation of the pseudo-inverse of square matrices (..., m, m)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm1 = a.abs().sum(dim=-2).amax(dim=-1)[..., None, None]
    norm_inf = a.abs().sum(dim=-1).amax(dim=-1)[..., None, None]
    z = a.transpose(-1, -2) / (norm1 * norm_inf)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _softmax(kernel: Kernel, s: Tensor) -> Tensor:
    a, _ = tile_weights(kernel, s, None)
    return a / normalizer(kernel, a.sum(dim=-1, keepdim=True), 0.0)


def nystrom(problem: AttentionProblem, *, num_landmarks: int = 64, pinv_iterations: int | None = 6) -> Tensor:
    """Nystromformer attention with segment-mean landmarks (see the module doc).

    The core ``nystrom(problem, ...)`` returns (N, H_kv, G, L, D_v); :func:`nystrom_attention`
    takes :func:`attnlab.attention`'s arguments (less ``eps``).

    Args:
        num_landmarks: m, in 1..min(L, S); m = L = S is exact.
        kernel: must be ``"softmax"``.
        attn_mask: must be None (not supported).
        is_causal: must be False (not supported).
        pinv_iterations: iterations of the approximate pseudo-inverse (>= 1; the paper's
            default 6), or None for the exact ``torch.linalg.pinv``.
        Other arguments: as :func:`attnlab.attention`.

    Returns:
        (B..., H, L, D_v) in the input dtype.

    Raises:
        TypeError: ``num_landmarks`` or ``pinv_iterations`` is not an int, or as :func:`attnlab.attention`.
        ValueError: ``is_causal``, ``attn_mask``, a non-softmax kernel, ``num_landmarks``
            outside 1..min(L, S), ``pinv_iterations`` < 1, or as :func:`attnlab.attention`.
    """
    p = problem
    if not p.kernel.exponential:
        raise ValueError(f"kernel: method 'nystrom' approximates softmax only, got {p.kernel.name!r}")
    if p.is_causal:
        raise ValueError("is_causal: method 'nystrom' does not support causal attention")
    if p.mask is not None:
        raise ValueError("attn_mask: method 'nystrom' does not support masks; pass None")
    check_int("num_landmarks", num_landmarks)
    if pinv_iterations is not None:
        check_int("pinv_iterations", pinv_iterations, 1)
    L, S = p.q.shape[-2], p.k.shape[-2]
    if not 1 <= num_landmarks <= min(L, S):
        raise ValueError(
            f"num_landmarks must be in 1..min(L, S) = 1..{min(L, S)}, got {num_landmarks}"
        )
    dtype = p.compute_dtype
    q, k, v = (x.to(dtype) for x in (p.q, p.k, p.v))
    q_land, k_land = segment_means(q, num_landmarks), segment_means(k, num_landmarks)
    f = _softmax(p.kernel, p.scale * q @ k_land.transpose(-1, -2))
    a = _softmax(p.kernel, p.scale * q_land @ k_land.transpose(-1, -2))
    b = _softmax(p.kernel, p.scale * q_land @ k.transpose(-1, -2))
    a_pinv = torch.linalg.pinv(a) if pinv_iterations is None else iterative_pinv(a, pinv_iterations)
    return (f @ (a_pinv @ (b @ v))).to(p.q.dtype)


nystrom_attention = attention_signature(nystrom, name="nystrom_attention", without=("eps",))
