"""Test helpers shared by attnlab's own tests and by anyone who adds a backend.

One tolerance table and one rule, FlashAttention's: a low-precision result is good when its
error against float64 is at most twice the error of the plain PyTorch implementation computed
in the same low precision (:func:`plain_attention`), both measured against float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .problem import AttentionProblem
from .signature import attention_signature

__all__ = ["TOLERANCES", "assert_close", "max_error", "plain_attention"]

#: (rtol, atol) for results computed in float32/float64 and compared with a float64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 2e-5),
}

#: Absolute error floor added to the FlashAttention rule, for a plain result that is exact.
LOW_PRECISION_FLOOR = 1e-4


def max_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected|, computed in float64 (inf if either is non-finite somewhere)."""
    diff = (actual.detach().double() - expected.detach().double()).abs()
    return float(diff.max()) if diff.numel() else 0.0


def assert_close(
    actual: Tensor, expected: Tensor, *, plain: Tensor | None = None, what: str = "output"
) -> None:
    """Assert ``actual`` matches the float64 ``expected``.

    float32/float64 results use :data:`TOLERANCES`. float16/bfloat16 results need ``plain``
    (the same quantity from :func:`plain_attention` in that dtype) and must satisfy
    ``err(actual) <= 2 * err(plain) + LOW_PRECISION_FLOOR``.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{what}: non-finite values in the result")
    err = max_error(actual, expected)
    if actual.dtype in TOLERANCES:
        rtol, atol = TOLERANCES[actual.dtype]
        bound = atol + rtol * float(expected.detach().abs().max()) if expected.numel() else atol
        if err > bound:
            raise AssertionError(f"{what} ({actual.dtype}): max error {err:.3g} > {bound:.3g}")
        return
    if plain is None:
        raise ValueError(f"plain must be given to compare a {actual.dtype} result")
    bound = 2 * max_error(plain, expected) + LOW_PRECISION_FLOOR
    if err > bound:
        raise AssertionError(
            f"{what} ({actual.dtype}): max error {err:.3g} > 2 x plain PyTorch's + floor = {bound:.3g}"
        )


def _plain_attention(problem: AttentionProblem) -> Tensor:
    """The naive implementation, every step in the inputs' own dtype (no upcast), no GQA.

    It is the yardstick of the FlashAttention rule, not a backend: in float16 its squared
    scores overflow where attnlab's do not.
    """
    kern = problem.kernel
    s = (problem.q @ problem.k.transpose(-1, -2)) * problem.scale
    visible = problem.visible
    if kern.exponential:
        if visible is not None:
            s = s.masked_fill(~visible, float("-inf"))
        a = torch.exp(s - s.amax(-1, keepdim=True).nan_to_num(0.0, 0.0, 0.0))
        z = a.sum(-1, keepdim=True)
    else:
        a = kern.weights(s)
        if visible is not None:
            a = torch.where(visible, a, 0)
        z = a.sum(-1, keepdim=True) + problem.eps
    return (a / torch.where(z > 0, z, 1)) @ problem.v


#: ``plain_attention(query, key, value, *, kernel, attn_mask, is_causal, scale, eps)``: validated
#: as :func:`attnlab.attention` is (by the same front door), computed naively.
plain_attention = attention_signature(_plain_attention, name="plain_attention", without=("enable_gqa",))
