"""One contract for every method: a capability record and one refusal (DESIGN.md section 8).

Backends, practical approximations and oracles are each registered by name
(:class:`attnlab.registry.Registry`) as a :class:`MethodRecord`: the function that runs it and
what it can do. :meth:`MethodRecord.refusal` turns the record into the one answer every reader
uses, ``refusal(problem) -> str | None`` (why the method cannot take this
:class:`~attnlab.problem.AttentionProblem`): ``backend="auto"``, the front doors
(:func:`attnlab.attention`, :func:`attnlab.approx.approximate_attention`), the ``approx-error``
study and the test sweep, which compares every (method, kernel, device, dtype) a record accepts
with the float64 reference and asserts every refusal.

    >>> import torch
    >>> from attnlab.methods import Budget, MethodRecord
    >>> from attnlab.problem import build_problem
    >>> rec = MethodRecord("mine", lambda p: p.v, kind="approximation", kernels=("softmax",),
    ...                    dtypes=(torch.float32,), causal=False, budget=Budget("top_k", 8, 1))
    >>> q = torch.randn(1, 1, 4, 2)
    >>> rec.refusal(build_problem(q, q, q))
    >>> rec.refusal(build_problem(q, q, q, is_causal=True))
    "is_causal: method 'mine' does not support is_causal=True"
    >>> rec.refusal(build_problem(q.double(), q.double(), q.double(), kernel="expressive"))
    "kernel: method 'mine' does not support kernel 'expressive' (it takes ['softmax'])"
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .kernels import Kernel, available_kernels, get_kernel, is_registered
from .problem import AttentionProblem

__all__ = ["ALL_DTYPES", "MASKS", "Budget", "MethodRecord"]

#: Every dtype :func:`attnlab.attention` takes.
ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: What a record's ``masks`` may say: every bool mask, key-padding masks only (the same row for
#: every query: broadcastable to (B..., H, 1, S)), or no mask.
MASKS = ("any", "key-padding", "none")
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
                torch.float64: "float64"}


@dataclass(frozen=True)
class Budget:
    """A method's budget (its cost per query): the option, its default and its range.

    Attributes:
        option: the keyword that sets it (``top_k``, ``num_features``, ``r``).
        default: its value when left out (None: the method derives it, e.g. from D).
        low, high: its range; ``high`` is None (unbounded), an int, or ``high(problem) -> int``
            when it depends on the input (``nystrom``: min(L, S) landmarks).
    """

    option: str
    default: int | None
    low: int = 1
    high: int | Callable[[AttentionProblem], int] | None = None

    def value_for(self, problem: AttentionProblem) -> int | None:
        """The default clipped to the range on ``problem`` (None: the method's own default)."""
        if self.default is None:
            return None
        high = self.high(problem) if callable(self.high) else self.high
        return max(self.low, self.default if high is None else min(self.default, high))


@dataclass(frozen=True)
class MethodRecord:
    """A registered method and what it can do.

    Attributes:
        name: registry name.
        run: the function (backends: ``run(problem) -> output`` in the canonical layout;
            approximations: the function users call, ``fn(query, key, value, **options)``, which
            :func:`~attnlab.signature.attention_signature` makes from a core ``core(problem, **options)``
            that :func:`attnlab.approx.approximate_attention` runs (:func:`~attnlab.signature.attention_core`);
            oracles: ``solve(p, v, r, ...)``).
        kind: ``"backend"``, ``"approximation"`` or ``"oracle"`` (names it in messages).
        kernels: the kernel names it computes (only the registered kernel objects of those names),
            or None for every kernel, user kernels too.
        devices: device types it runs on.
        dtypes: input dtypes it takes.
        masks: one of :data:`MASKS`.
        causal: whether it takes ``is_causal=True``.
        dropout: whether it takes ``dropout_p > 0``.
        differentiable: whether gradients flow through it.
        returns_weights: whether it can materialize the weights.
        budget: its :class:`Budget`, or None (exact methods).
        exact: backends: computes attention exactly; approximations: ``exact_options(problem)``
            gives options under which it equals exact attention (see ``exact_options``).
        exact_options: ``exact_options(problem) -> dict`` of options that make the method exact on
            ``problem`` (``topk``: ``{"top_k": S}``), or None where it never is.
        refuse: ``refuse(problem) -> str | None``, what the fields cannot say (a head dim limit, a
            library that cannot load); evaluated after them.
        advice: appended to a refusal from the fields (``"use backend 'chunked'"``).
        doc: one line for listings.
    """

    name: str
    run: Callable[..., Any]
    kind: str = "method"
    kernels: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    masks: str = "any"
    causal: bool = True
    dropout: bool = False
    differentiable: bool = True
    returns_weights: bool = False
    budget: Budget | None = None
    exact_options: Callable[[AttentionProblem], dict] | None = None
    refuse: Callable[[AttentionProblem], str | None] | None = None
    advice: str = ""
    doc: str = ""

    def __post_init__(self) -> None:
        if not callable(self.run):
            raise TypeError(f"run must be callable, got {type(self.run).__name__}")
        if self.masks not in MASKS:
            raise ValueError(f"masks must be one of {list(MASKS)}, got {self.masks!r}")
        if self.kernels is not None and (isinstance(self.kernels, str) or not all(isinstance(k, str)
                                                                                  for k in self.kernels)):
            raise TypeError(f"kernels must be None or a tuple of kernel names, got {self.kernels!r}")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise TypeError(f"budget must be an attnlab.methods.Budget or None, got {type(self.budget).__name__}")
        # which field checks can refuse anything (the others are skipped on every call)
        object.__setattr__(self, "_checks_dtype", not set(ALL_DTYPES) <= set(self.dtypes))
        object.__setattr__(self, "_checks_device", not {"cpu", "cuda"} <= set(self.devices))

    @property
    def who(self) -> str:
        return f"{self.kind} {self.name!r}"

    def _say(self, arg: str, text: str) -> str:
        """A refusal naming the backend, or for other methods the argument first (as they raise)."""
        return f"{self.who} {text}" if self.kind == "backend" else f"{arg}: method {self.name!r} {text}"

    def supports(self, kernel: Kernel) -> bool:
        """Whether it computes ``kernel`` (a kernel that merely borrows a listed name does not count)."""
        if self.kernels is None:
            return True
        return kernel.name in self.kernels and is_registered(kernel)

    def kernel_names(self) -> list[str]:
        """The registered kernels it computes."""
        return [k for k in available_kernels() if self.supports(get_kernel(k))]

    def refusal(self, problem: AttentionProblem) -> str | None:
        """Why it cannot take ``problem`` (None when it can): kernel, dtype, device, mask, causal,
        dropout from the fields, then :attr:`refuse`."""
        reason = self._field_refusal(problem)
        if reason is not None:
            return f"{reason}: {self.advice}" if self.advice else reason
        if not self.dropout and problem.dropout_p > 0:
            fix = ("use backend 'auto' (it picks one that does), 'chunked', 'reference' or, for its kernels, 'cpp'"
                   if self.kind == "backend" else "pass dropout_p=0")
            return self._say("dropout_p", f"does not support dropout_p > 0 (got {problem.dropout_p}): {fix}")
        return None if self.refuse is None else self.refuse(problem)

    def accepts(self, problem: AttentionProblem) -> str | None:
        """Deprecated: the old name of :meth:`refusal` (it answers the reason, not a bool)."""
        warnings.warn("Backend.accepts(problem) is deprecated: use .refusal(problem), which it calls",
                      DeprecationWarning, stacklevel=2)
        return self.refusal(problem)

    def _field_refusal(self, p: AttentionProblem) -> str | None:
        if not self.supports(p.kernel):
            listed = f" (it takes {list(self.kernels)})" if self.kernels else ""
            return self._say("kernel", f"does not support kernel {p.kernel.name!r}{listed}")
        if self._checks_dtype and p.q.dtype not in self.dtypes:
            takes = ", ".join(_DTYPE_NAMES.get(d, str(d)) for d in self.dtypes)
            return self._say("dtype", f"does not support {_DTYPE_NAMES.get(p.q.dtype, p.q.dtype)} (it takes {takes})")
        if self._checks_device and p.q.device.type not in self.devices:
            return self._say("device", f"does not support device {p.q.device.type!r} (it runs on {list(self.devices)})")
        if self.masks == "none" and p.mask is not None:
            return self._say("attn_mask", "does not support masks; pass None")
        if self.masks == "key-padding" and p.mask is not None and p.mask.shape[3] > 1:
            if not bool((p.mask == p.mask[..., :1, :]).all()):
                if self.kind != "backend":
                    return self._say("attn_mask", "takes key-padding masks only (the same for every query, "
                                                  "broadcastable to (B..., H, 1, S))")
                return (f"attn_mask must be the same for every query with {self.who} (a key-padding mask, "
                        "broadcastable to (B..., H, 1, S)); a mask that varies over queries needs a quadratic "
                        "backend such as 'chunked'")
        if not self.causal and p.is_causal:
            return self._say("is_causal", "does not support is_causal=True")
        return None
