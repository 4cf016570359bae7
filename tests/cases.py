"""Attention test cases: one named shape/mask configuration each, ids like fla's."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    B: int = 2
    H: int = 2
    Hkv: int | None = None
    L: int = 33
    S: int | None = None
    D: int = 16
    Dv: int | None = None
    causal: bool = False
    mask: str | None = None  # None | "random" | "padding" | "empty-rows"

    @property
    def id(self) -> str:
        parts = [f"B{self.B}", f"H{self.H}"]
        if self.Hkv:
            parts.append(f"Hkv{self.Hkv}")
        parts += [f"L{self.L}", f"S{self.S or self.L}", f"D{self.D}"]
        if self.Dv:
            parts.append(f"Dv{self.Dv}")
        if self.causal:
            parts.append("causal")
        if self.mask:
            parts.append(f"mask-{self.mask}")
        return "-".join(parts)

    def make(self, dtype=torch.float64, seed: int = 0, requires_grad: bool = False, device: str = "cpu"):
        """(q, k, v, mask) in ``dtype`` on ``device``; q/k scaled so that scores are O(1)-O(3)."""
        g = torch.Generator().manual_seed(seed)
        S, Hkv, Dv = self.S or self.L, self.Hkv or self.H, self.Dv or self.D
        q = torch.randn(self.B, self.H, self.L, self.D, generator=g, dtype=torch.float64) * 1.5
        k = torch.randn(self.B, Hkv, S, self.D, generator=g, dtype=torch.float64) * 1.5
        v = torch.randn(self.B, Hkv, S, Dv, generator=g, dtype=torch.float64)
        mask = None
        if self.mask == "random":
            mask = torch.rand(self.B, 1, self.L, S, generator=g) > 0.3
        elif self.mask == "padding":
            lengths = torch.randint(1, S + 1, (self.B,), generator=g)
            mask = (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
        elif self.mask == "empty-rows":
            mask = torch.rand(self.B, self.H, self.L, S, generator=g) > 0.5
            mask[:, :, ::3] = False
        tensors = [t.to(device, dtype).requires_grad_(requires_grad) for t in (q, k, v)]
        return (*tensors, None if mask is None else mask.to(device))

    @property
    def gqa(self) -> bool:
        return bool(self.Hkv) and self.Hkv != self.H


def backend_kernel_pairs() -> list[tuple[str, str]]:
    """Every (registered backend, kernel its record computes): registering a backend enrols it."""
    import attnlab
    from attnlab.backends import available_backends, get_backend

    return [(b, k) for b in available_backends() for k in attnlab.available_kernels()
            if get_backend(b).supports(attnlab.get_kernel(k))]


def devices_here() -> list[str]:
    """The device types this machine has: every one is swept (a record that lacks it refuses)."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def sweep_device(backend: str) -> str:
    """Where ``backend``'s record says it runs, among :func:`devices_here` (its first)."""
    from attnlab.backends import get_backend

    devices = [d for d in get_backend(backend).devices if d in devices_here()]
    return devices[0] if devices else "cpu"


def sweep_dtype(backend: str, preferred: torch.dtype = torch.float64) -> torch.dtype:
    """``preferred`` where ``backend``'s record takes it, else the widest dtype it takes (edge cases
    run in float64 on every backend that can, in float32 on one that cannot: ``triton``)."""
    from attnlab.backends import get_backend

    dtypes = get_backend(backend).dtypes
    order = (preferred, torch.float64, torch.float32, torch.bfloat16, torch.float16)
    return next(d for d in order if d in dtypes)


CASES = [
    Case(),
    Case(causal=True),
    Case(mask="random"),
    Case(mask="padding", causal=True),
    Case(mask="empty-rows"),
    Case(H=4, Hkv=2, causal=True),
    Case(H=4, Hkv=1, mask="random"),
    Case(L=17, S=40, Dv=8),
    Case(L=40, S=17, causal=True),
    Case(B=1, H=1, L=1, S=1),
    Case(B=3, H=1, L=65, D=8, Dv=12, causal=True, mask="random"),
    Case(B=1, H=2, L=70, S=67, D=64, Dv=48, causal=True, mask="padding"),  # D=64, Dv=48: padded by triton
]
#: The cases of the low-precision sweep (bf16, fp16: FlashAttention's rule).
LOW_PRECISION_CASES = [
    Case(causal=True),
    Case(mask="random", H=4, Hkv=2),
    Case(L=17, S=40, Dv=8, mask="empty-rows"),
]


def refused(backend: str, kernel: str, q, k, v, mask, *, causal: bool = False, gqa: bool = False) -> bool:
    """Whether ``backend``'s record refuses this input; if so, the call must raise exactly that
    reason (asserted here) and the caller returns: every refusal of the sweep is asserted."""
    import re

    import pytest

    import attnlab
    from attnlab.backends import get_backend
    from attnlab.problem import build_problem

    problem = build_problem(q, k, v, kernel=kernel, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    reason = get_backend(backend).refusal(problem)
    if reason is None:
        return False
    with pytest.raises(ValueError, match=re.escape(reason)):
        attnlab.attention(q, k, v, kernel=kernel, attn_mask=mask, is_causal=causal, enable_gqa=gqa, backend=backend)
    return True
