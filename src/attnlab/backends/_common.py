"""What every backend shares: the canonical problem layout and the weight formula on a tile.

Backends receive a :class:`Problem` in the canonical 5-D layout, in which grouped-query
attention is a broadcast instead of a copy:

    q (N, H_kv, G, L, D)    k (N, H_kv, 1, S, D)    v (N, H_kv, 1, S, D_v)
    mask: None or bool, broadcastable to (N, H_kv, G, L, S), True = may attend

N flattens the leading batch dims, G = H_q // H_kv. ``is_causal`` means query i sees keys
j <= i (top-left alignment, as torch's SDPA documents it).

Attention dropout (``dropout_p > 0``) is counter-based, so that a recomputing backward and every
backend draw the same mask: key j of query row r (r flattens (N, H_kv, G, L), which is the
caller's (B..., H, L) order) is kept iff ``dropout_bits(seed, r, j) >= dropout_threshold(p)``,
a 32-bit integer hash defined once here and mirrored bit for bit in ``csrc/attention_cpu.cpp``.
The decision depends on (seed, r, j) only, never on tile sizes or thread counts.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..kernels import Kernel, get_kernel
from ..problem import (  # noqa: F401  (re-exported for the backends)
    AttentionProblem,
    all_finite,
    causal_visible,
    combine_visible,
    hide_unseen_keys,
    keys_finite,
    may_hide_keys,
    needs_grad,
    run_hiding_unseen_keys,
    visibility,
)

#: The problem type every backend takes (public: :class:`attnlab.problem.AttentionProblem`).
Problem = AttentionProblem


#: The kernels the fused backends (``cpp``, ``triton``) have compiled in, by the id their code
#: switches on (the C++ KernelId enum, the Triton tl.constexpr KERNEL).
FUSED_KERNEL_IDS = {"expressive": 0, "squared": 1, "relu": 2, "relu2": 3}


def is_fused_kernel(kernel: Kernel) -> bool:
    """One of :data:`FUSED_KERNEL_IDS` as the registry holds it: not softmax, not a user kernel
    (even one registered under another name or built by hand with a built-in's name)."""
    return kernel.name in FUSED_KERNEL_IDS and get_kernel(kernel.name) is kernel


def crosses_diagonal(i0: int, k_end: int) -> bool:
    """Whether a causal tile of queries from i0 and keys 0:k_end holds a key after a query (only
    such a tile needs the triangle: below the diagonal every key is visible)."""
    return k_end - 1 > i0


def tile_visible(
    mask: Tensor | None, causal: bool, ns: slice, hs: slice, i0: int, i1: int, k_end: int,
    device: torch.device,
) -> Tensor | None:
    """The visibility of the tile (batch ns, heads hs, queries i0:i1, keys 0:k_end) of a canonical
    5-D mask: the mask's slice (broadcast dims stay 1) AND the causal triangle, or None."""
    tile_mask = None
    if mask is not None:
        full = slice(None)
        tile_mask = mask[
            ns if mask.shape[0] > 1 else full,
            hs if mask.shape[1] > 1 else full,
            full,
            slice(i0, i1) if mask.shape[3] > 1 else full,
            slice(0, k_end) if mask.shape[4] > 1 else full,
        ]
    tri = causal_visible(i0, i1, k_end, device) if causal and crosses_diagonal(i0, k_end) else None
    return combine_visible(tile_mask, tri)


def tile_weights(
    kernel: Kernel, s: Tensor, visible: Tensor | None, row_max: Tensor | None = None, *, inplace: bool = False,
    select: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Unnormalized kernel weights of a score tile, zero where not visible.

    For the exponential kernel the scores are shifted by the row maximum over visible keys
    (computed here unless ``row_max`` is given; a row with no visible key uses 0). Masked
    scores never enter a non-exponential kernel as -inf: their weight is zeroed after f.
    ``inplace=True`` overwrites ``s`` (for backends that own the buffer, outside autograd); it
    zeroes hidden weights by multiplying with the mask (several times faster on CPU than a select),
    which is exact only where every weight is finite (0 * inf = NaN): pass ``select=True`` when a
    weight may not be (see :func:`all_finite`). Out of place, hidden weights are always selected.

    Returns:
        (weights, row_max): row_max is None for non-exponential kernels.
    """
    if kernel.exponential:
        if visible is not None:
            s = s.masked_fill_(~visible, float("-inf")) if inplace else s.masked_fill(~visible, float("-inf"))
        if row_max is None:
            if s.shape[-1] == 0:
                row_max = s.new_zeros((*s.shape[:-1], 1))
            else:
                row_max = s.amax(dim=-1, keepdim=True)
                row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
        if inplace:
            return kernel.weights_(s.sub_(row_max)), row_max
        return kernel.weights(s - row_max), row_max
    if inplace:
        a = kernel.weights_(s)
        if visible is None:
            return a, None
        return (a.masked_fill_(~visible, 0.0) if select else a.mul_(visible)), None
    if visible is None:
        return kernel.weights(s), None
    # f sees 0 for a hidden score, so that no inf or NaN there (a huge or non-finite key) reaches
    # the gradient through f'(s) * 0 = NaN; the outer select drops f(0).
    return torch.where(visible, kernel.weights(torch.where(visible, s, 0.0)), 0.0), None


def normalizer(kernel: Kernel, row_sum: Tensor, eps: float) -> Tensor:
    """The denominator of each row: sum + eps (sum alone for softmax), with 0 replaced by 1 so
    that a row without weight gives a zero output and finite gradients."""
    z = row_sum if kernel.exponential else row_sum + eps
    return torch.where(z > 0, z, 1.0)


# Tests set this (see tests/conftest.py) so that any output element a backend forgets to write
# is NaN and fails loudly, instead of holding whatever the allocator left there.
FILL_FRESH_WITH_NAN = False


def fresh(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialized tensor for a backend to fill (NaN-filled under the test switch)."""
    dtype = dtype or like.dtype
    if FILL_FRESH_WITH_NAN:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


# --- attention dropout ---------------------------------------------------------------------
# A counter-based generator: the keep decision of (seed, row, key) is a pure integer function.
# Every word is an int64 tensor (or Python int) holding an unsigned 32-bit value; products are
# formed from 16-bit halves so that nothing exceeds 2^49 (no signed overflow in int64).
_MASK32 = 0xFFFFFFFF
_ROW_SALT, _KEY_SALT = 0x9E3779B9, 0x85EBCA6B


def _mul32(x, c: int):
    """x * c mod 2^32, for 0 <= x < 2^32 and a constant 0 <= c < 2^32."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def mix32(x):
    """The lowbias32 integer finalizer (C. Wellons): a bijection of 32-bit words with good
    avalanche. Works on Python ints and int64 tensors; C++: ``mix32`` in attention_cpu.cpp."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(h, word):
    return mix32(word ^ h)


def dropout_row_state(seed: int, rows: Tensor) -> Tensor:
    """The per-row part of the hash: seed (64 bits) and row index (int64 >= 0), both split into
    32-bit words and absorbed in order."""
    h = _absorb(_absorb(_ROW_SALT, seed & _MASK32), (seed >> 32) & _MASK32)
    return _absorb(_absorb(h, rows & _MASK32), (rows >> 32) & _MASK32)


def dropout_key_state(seed: int, keys: Tensor) -> Tensor:
    """The per-key part of the hash (keys: int64 indices >= 0, < 2^32)."""
    h = _absorb(_absorb(_KEY_SALT, seed & _MASK32), (seed >> 32) & _MASK32)
    return _absorb(h, keys)


def dropout_bits(seed: int, rows: Tensor, keys: Tensor) -> Tensor:
    """32-bit words (int64) of shape (*rows.shape, len(keys)): mix32(row state XOR key state)."""
    return mix32(dropout_row_state(seed, rows)[..., None] ^ dropout_key_state(seed, keys))


def dropout_threshold(p: float) -> int:
    """Keep a weight iff its word is >= this threshold: P(keep) = 1 - p up to 2^-32."""
    return min(int(p * 2.0**32), _MASK32)


def dropout_keep(seed: int, p: float, rows: Tensor, keys: Tensor) -> Tensor:
    """Bool (*rows.shape, len(keys)): which (row, key) weights dropout keeps."""
    return dropout_bits(seed, rows, keys) >= dropout_threshold(p)


def dropout_multiplier(dropout: tuple[float, int], shape: tuple[int, ...], ns: slice, hs: slice, i0: int,
                       i1: int, k_end: int, like: Tensor) -> Tensor:
    """keep / (1 - p) on the tile (batch ns, heads hs, all groups, queries i0:i1, keys 0:k_end) of
    a call with q of ``shape`` (N, H_kv, G, L, D), its rows numbered in that order; ``dropout`` is
    (p, seed). In ``like``'s dtype and on its device."""
    (p, seed), (N, H, G, L) = dropout, shape[:4]
    device = like.device
    n = torch.arange(N, device=device)[ns].view(-1, 1, 1, 1)
    h = torch.arange(H, device=device)[hs].view(1, -1, 1, 1)
    g = torch.arange(G, device=device).view(1, 1, -1, 1)
    i = torch.arange(i0, i1, device=device).view(1, 1, 1, -1)
    rows = ((n * H + h) * G + g) * L + i
    keep = dropout_keep(seed, p, rows, torch.arange(k_end, device=device))
    return keep.to(like.dtype).mul_(1.0 / (1.0 - p))


def dropout_refusal(backend: str, problem: Problem) -> str | None:
    """The refusal of a backend that has no attention dropout, or None when dropout_p == 0."""
    if problem.dropout_p == 0:
        return None
    return (f"backend {backend!r} does not support dropout_p > 0 (got {problem.dropout_p}): use backend "
            "'auto' (it picks one that does), 'chunked', 'reference' or, for its kernels, 'cpp'")


# --- double backward -------------------------------------------------------------------------


def double_backward_error(who: str) -> str:
    """The message for differentiating a first-order-only backward a second time."""
    return (f"{who} does not support double backward (differentiating its gradients, e.g. "
            "torch.autograd.grad(..., create_graph=True) or gradgradcheck): use backend='reference' "
            "for double backward")


def first_order_backward(who: str):
    """Decorate an autograd Function's ``backward`` that computes first-order gradients only.

    Under ``create_graph=True`` (grad mode on inside backward) it raises a RuntimeError naming
    ``who`` and the fix, instead of returning gradients that silently carry no graph (which
    ``once_differentiable`` alone allows when the incoming gradient does not require grad).
    """
    def decorate(backward):
        inner = once_differentiable(backward)

        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(double_backward_error(who))
            return inner(ctx, *grads)

        return wrapper

    return decorate


class _FirstOrderOnly(torch.autograd.Function):
    """Identity whose backward refuses ``create_graph=True`` (for outputs of torch ops that have
    no double backward and would fail with a message that does not say what to do)."""

    @staticmethod
    def forward(ctx, x, who):
        ctx.who = who
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError(double_backward_error(ctx.who))
        return grad, None


def first_order_only(x: Tensor, who: str) -> Tensor:
    """``x``, guarded so that differentiating its gradient raises :func:`double_backward_error`."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _FirstOrderOnly.apply(x, who)
