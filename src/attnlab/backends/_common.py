"""What every backend shares: the canonical problem layout and the weight formula on a tile.

Backends receive a :class:`Problem` in the canonical 5-D layout, in which grouped-query
attention is a broadcast instead of a copy:

    q (N, H_kv, G, L, D)    k (N, H_kv, 1, S, D)    v (N, H_kv, 1, S, D_v)
    mask: None or bool, broadcastable to (N, H_kv, G, L, S), True = may attend

N flattens the leading batch dims, G = H_q // H_kv. ``is_causal`` means query i sees keys
j <= i (top-left alignment, as torch's SDPA documents it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..kernels import Kernel, get_kernel


@dataclass(frozen=True)
class Problem:
    """One validated attention call in the canonical layout (see the module docstring)."""

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None
    kernel: Kernel
    is_causal: bool
    scale: float
    eps: float

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 inputs compute in float64; everything else accumulates in float32."""
        return torch.float64 if self.q.dtype == torch.float64 else torch.float32


#: The kernels the fused backends (``cpp``, ``triton``) have compiled in, by the id their code
#: switches on (the C++ KernelId enum, the Triton tl.constexpr KERNEL).
FUSED_KERNEL_IDS = {"expressive": 0, "squared": 1, "relu": 2, "relu2": 3}


def is_fused_kernel(kernel: Kernel) -> bool:
    """One of :data:`FUSED_KERNEL_IDS` as the registry holds it: not softmax, not a user kernel
    (even one registered under another name or built by hand with a built-in's name)."""
    return kernel.name in FUSED_KERNEL_IDS and get_kernel(kernel.name) is kernel


def causal_visible(q_start: int, q_end: int, k_end: int, device: torch.device) -> Tensor:
    """Bool (q_end - q_start, k_end): query i may see key j iff j <= i (top-left aligned)."""
    rows = torch.arange(q_start, q_end, device=device)[:, None]
    return torch.arange(k_end, device=device)[None, :] <= rows


def combine_visible(mask: Tensor | None, causal: Tensor | None) -> Tensor | None:
    """AND of a user mask and a causal mask, either of which may be absent."""
    if mask is None:
        return causal
    if causal is None:
        return mask
    return mask & causal


def visibility(mask: Tensor | None, is_causal: bool, L: int, S: int, device: torch.device) -> Tensor | None:
    """The whole visibility of a call: a user bool mask (broadcastable to (..., L, S)) AND the
    causal (L, S) triangle, or None when every key is visible."""
    return combine_visible(mask, causal_visible(0, L, S, device) if is_causal else None)


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
    kernel: Kernel, s: Tensor, visible: Tensor | None, row_max: Tensor | None = None, *, inplace: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Unnormalized kernel weights of a score tile, zero where not visible.

    For the exponential kernel the scores are shifted by the row maximum over visible keys
    (computed here unless ``row_max`` is given; a row with no visible key uses 0). Masked
    scores never enter a non-exponential kernel as -inf: their weight is zeroed after f.
    ``inplace=True`` overwrites ``s`` (for backends that own the buffer, outside autograd).

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
        return (a.mul_(visible) if visible is not None else a), None
    a = kernel.weights(s)
    if visible is not None:
        a = torch.where(visible, a, 0.0)
    return a, None


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
