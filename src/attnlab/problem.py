"""The attention problem: one validated call, built once, taken by every method.

:func:`build_problem` is the front door: it checks an :func:`attnlab.attention`-style call and
returns an :class:`AttentionProblem` in the canonical 5-D layout, in which grouped-query
attention is a broadcast instead of a copy::

    q (N, H_kv, G, L, D)    k (N, H_kv, 1, S, D)    v (N, H_kv, 1, S, D_v)
    mask: None or bool, broadcastable to (N, H_kv, G, L, S), True = may attend

N flattens the leading batch dims, G = H_q // H_kv. ``is_causal`` means query i sees keys
j <= i (top-left alignment, as torch's SDPA documents it); :attr:`AttentionProblem.visible` is
the mask with the causal triangle folded in, formed once per problem on first use. Backends,
practical approximations and oracles take the same problem (see :mod:`attnlab.methods`).

    >>> import torch
    >>> from attnlab.problem import build_problem
    >>> q = torch.randn(2, 4, 5, 8)
    >>> p = build_problem(q, q[:, :2], q[:, :2], kernel="expressive", is_causal=True, enable_gqa=True)
    >>> tuple(p.q.shape), p.groups, p.out_shape, p.compute_dtype, tuple(p.visible.shape)
    ((2, 2, 2, 5, 8), 2, (2, 4, 5, 8), torch.float32, (5, 5))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from . import _problem_checks as checks
from .kernels import Kernel, get_kernel

__all__ = [
    "PROBLEM_ARGS",
    "AttentionProblem",
    "build_problem",
    "causal_visible",
    "combine_visible",
    "visibility",
]


@dataclass(frozen=True)
class AttentionProblem:
    """One validated attention call in the canonical layout (see the module docstring).

    Attributes:
        q, k, v: (N, H_kv, G, L, D), (N, H_kv, 1, S, D), (N, H_kv, 1, S, D_v), the input dtype.
        mask: the user's bool mask, broadcastable to (N, H_kv, G, L, S), or None.
        kernel: the similarity kernel.
        is_causal: query i sees keys j <= i.
        scale, eps: the score scale and the normalizer's eps (non-exponential kernels).
        dropout_p, dropout_seed: attention dropout on the normalized weights, in [0, 1); kept
            weights are scaled by 1 / (1 - p); the 64-bit seed (drawn per call) keys the mask.
        finite: True: every element of k and v is known to be finite; False: some was not, and
            the keys no query sees were zeroed; None: not checked (see :func:`hide_unseen_keys`).
        out_shape: the caller's output shape (B..., H, L, D_v), or None for a problem built by hand.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None
    kernel: Kernel
    is_causal: bool
    scale: float
    eps: float
    dropout_p: float = 0.0
    dropout_seed: int = 0
    finite: bool | None = None
    out_shape: tuple[int, ...] | None = field(default=None, compare=False)

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 inputs compute in float64; everything else accumulates in float32."""
        return torch.float64 if self.q.dtype == torch.float64 else torch.float32

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def groups(self) -> int:
        """G: query heads per key/value head (1 without GQA)."""
        return self.q.shape[2]

    @cached_property
    def visible(self) -> Tensor | None:
        """The mask AND the causal triangle (broadcastable to (N, H_kv, G, L, S)), or None when
        every key is visible; formed once per problem (``replace`` makes a new one)."""
        return visibility(self.mask, self.is_causal, self.q.shape[-2], self.k.shape[-2], self.q.device)

    def with_out_shape(self, output: Tensor) -> Tensor:
        """``output`` (N, H_kv, G, L, D_v) in the caller's shape (B..., H, L, D_v)."""
        return output if self.out_shape is None else output.reshape(self.out_shape)


def build_problem(
    query: Tensor, key: Tensor, value: Tensor, *, kernel: str | Kernel = "softmax", attn_mask: Tensor | None = None,
    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False, eps: float = 1e-6,
    dropout_p: float = 0.0, defer_finite_check: bool = False,
) -> AttentionProblem:
    """Validate an :func:`attnlab.attention` call and build its :class:`AttentionProblem`.

    The masked-key rule for padding is applied here (:func:`hide_unseen_keys`): keys no query
    sees are zeroed where some key or value is non-finite. With ``defer_finite_check=True`` and no
    gradient needed that check is left to the caller, which must then run the problem through
    :func:`run_hiding_unseen_keys` (as :func:`attnlab.attention` does: it checks the output,
    which is cheaper when decoding). With ``dropout_p > 0`` it draws the call's dropout seed.

    Raises:
        TypeError, ValueError: as :func:`attnlab.attention`.
    """
    kernel = get_kernel(kernel)
    checks.check_tensors(query, key, value)
    is_causal = checks.check_flag("is_causal", is_causal)
    enable_gqa = checks.check_flag("enable_gqa", enable_gqa)
    eps = checks.check_number("eps", eps, positive=False)
    dropout_p = checks.check_dropout(dropout_p)
    no_heads = query.dim() == 2  # bring (L, D) to (1, L, D) so that every call has a head dim
    if no_heads:
        query, key, value = query[None], key[None], value[None]
        if attn_mask is not None and getattr(attn_mask, "dim", lambda: 0)() == 3:
            raise ValueError(
                f"attn_mask must have at most 2 dims for 2-D inputs, got shape {tuple(attn_mask.shape)}"
            )
    checks.check_shapes(query, key, value, enable_gqa)
    *batch, H, L, D = query.shape
    Hkv, S, Dv = key.shape[-3], key.shape[-2], value.shape[-1]
    G = H // Hkv if Hkv else 1
    scale = 1.0 / math.sqrt(D) if scale is None else checks.check_number("scale", scale, positive=True)
    N = math.prod(batch)
    mask = None if attn_mask is None else checks.canonical_mask(attn_mask, query, (*batch, H, L, S), Hkv, G)
    problem = AttentionProblem(
        q=query.reshape(N, Hkv, G, L, D), k=key.reshape(N, Hkv, 1, S, D), v=value.reshape(N, Hkv, 1, S, Dv),
        mask=mask, kernel=kernel, is_causal=is_causal, scale=scale, eps=eps, dropout_p=dropout_p,
        dropout_seed=checks.draw_dropout_seed(query.device) if dropout_p > 0 else 0,
        out_shape=(L, Dv) if no_heads else (*batch, H, L, Dv),
    )
    return hide_unseen_keys(problem, defer=defer_finite_check)


# --- one signature for every method that takes the problem -------------------------------------

#: The arguments of :func:`attnlab.attention` that describe the problem; their defaults and
#: annotations are :func:`build_problem`'s (the one place the parameter list is written).
PROBLEM_ARGS = ("kernel", "attn_mask", "is_causal", "scale", "enable_gqa", "eps")
# --- visibility ------------------------------------------------------------------------------


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


# --- the masked-key rule for padding ---------------------------------------------------------


def all_finite(*tensors: Tensor) -> bool:
    """Whether every element of the tensors is finite, by one sum each (NaN and inf survive a sum;
    a sum of finite elements that overflows answers False, which only costs the caller its
    careful path). Far cheaper on CPU than ``isfinite(t).all()``; syncs on CUDA."""
    for t in tensors:
        t = t.detach()  # the sum is no part of any graph
        acc = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None
        if not bool(torch.isfinite(t.sum(dtype=acc))):
            return False
    return True


def needs_grad(problem: AttentionProblem) -> bool:
    """Whether autograd will differentiate this call (grad mode on and q, k or v requiring grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in (problem.q, problem.k, problem.v))


def may_hide_keys(problem: AttentionProblem) -> bool:
    """Whether a key can be hidden from every query: a mask, or causal with more keys than queries."""
    return problem.mask is not None or (problem.is_causal and problem.k.shape[-2] > problem.q.shape[-2])


def keys_finite(problem: AttentionProblem) -> bool:
    """Whether every key is finite: known from the front door's check, or one :func:`all_finite`."""
    return problem.finite is True or all_finite(problem.k)


def hide_unseen_keys(problem: AttentionProblem, *, defer: bool = False) -> AttentionProblem:
    """The masked-key rule for padding: a key that no query of its batch element and key/value head
    can see (``attn_mask`` and ``is_causal`` together) gets k_j = v_j = 0 (``finite=False``) where
    some key or value is non-finite (NaN, inf); otherwise ``problem`` itself, marked
    ``finite=True`` after one :func:`all_finite` check, or unchecked (``finite=None``) when no key
    can be hidden from every query (no mask; causal with S <= L), or with ``defer=True`` when no
    gradient is needed: the caller then runs it through :func:`run_hiding_unseen_keys`, which
    checks the output instead (O(L D_v) rather than O(S (D + D_v)): decoding reads k and v once).

    Selecting (``torch.where``) leaves no path from those entries to the output or to any
    gradient: their dk, dv are 0 and dq never meets them. Keys hidden from only some queries are
    each backend's to drop by selection."""
    p = problem
    if not may_hide_keys(p) or (defer and not needs_grad(p)):
        return p
    if all_finite(p.k, p.v):
        return replace(p, finite=True)
    visible = p.visible
    visible = visible.reshape((1,) * (5 - visible.dim()) + tuple(visible.shape))
    # (n|1, h|1, 1, S|1, 1): seen by some query of any group sharing the key/value head.
    seen = visible.any(dim=3, keepdim=True).any(dim=2, keepdim=True).transpose(-1, -2)
    return replace(p, k=torch.where(seen, p.k, 0.0), v=torch.where(seen, p.v, 0.0), finite=False)


def run_hiding_unseen_keys(run: Callable[[AttentionProblem], Any], problem: AttentionProblem) -> Any:
    """``run(problem)`` (an output, or a tuple led by one) for a problem from
    ``hide_unseen_keys(..., defer=True)``: when the check was deferred and the output is not all
    finite, the check is made and, if it zeroes some keys, ``run`` runs again on that problem."""
    result = run(problem)
    if problem.finite is not None or not may_hide_keys(problem):
        return result
    if all_finite(result[0] if isinstance(result, tuple) else result):
        return result
    hidden = hide_unseen_keys(problem)
    return result if hidden.finite else run(hidden)
