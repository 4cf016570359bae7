"""The KV-budget harness: every sparse selector reads a budget of full key/value rows per query
plus its summaries, and reports what it read (DESIGN.md section 10, issue 14).

A selector is ``fn(ctx, top_k, **options) -> Picked``. :class:`Context` holds one validated call
in attnlab's canonical layout (see :mod:`attnlab.problem`): q (N, H_kv, G, L, D), k
(N, H_kv, 1, S, D), v (N, H_kv, 1, S, D_v), the exact scores ``s = scale * q.k``, the visibility
(mask AND causal, True = may attend) and the kernel weights ``a = f(s)`` (softmax: ``exp(s - m)``
with m the row maximum over visible keys; ``a = 0`` on invisible keys). A selector may *look* at
``ctx.s``/``ctx.a`` only where its method reads every key (it then sets ``scores_all``, and the
harness charges the keys it did not load as full rows); everything else it uses must be a
summary whose size it reports.

A :class:`Picked` says, per query row: ``used`` (bool (..., L, S), the keys in the sum),
``read`` (the full K/V rows loaded, a superset of ``used``), ``coef`` (non-negative coefficients
c_j, 0 off ``used``) and ``summary_bytes``. The harness forms::

    numerator   = sum_{j in used} c_j v_j        denominator = sum_{j in used} c_j
    o_hat       = numerator / (denominator + eps)     (softmax: no eps; 0 where denominator = 0)

so a plain sparse selector sets c_j = a_j (the renormalized sparse output), a sampling estimator
sets c_j = a_j / pi_j (importance weights, self-normalized ratio) and a refitting one sets
c_j = beta_j * sum_i a_i. For sampling estimators ``numerator`` and ``denominator`` are unbiased
estimators of ``sum_j a_j v_j`` and ``sum_j a_j`` over the visible keys (softmax: in units of
exp(m)).

Budget and bytes: ``top_k`` bounds the full rows *read* per query (so ``rows_used <= rows_read <=
top_k``). Bytes read per query::

    bytes = rows_read * (D + D_v) * itemsize + summary_bytes
            (+ (n_visible - rows_read) * D * itemsize when the method scores every key exactly)

itemsize is that of the input dtype. A query that sees at most ``top_k`` keys reads them all and
gets exact attention, whatever the method (every method would read every key there).

:func:`select` runs one method and returns a :class:`Selection`; :func:`.compare.compare` measures methods
against oracle top-k and the value-aware oracle (``va-greedy``) over budgets, in the prefill
(every query) or decode (the last query against the cache of the whole sequence) setting.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..._checks import check_int
from ...functional import canonicalize
from ...kernels import Kernel, get_kernel

__all__ = [
    "SELECTORS",
    "Context",
    "Picked",
    "Selection",
    "make_approximation",
    "register_selector",
    "select",
    "timed_select",
]


@dataclass(frozen=True)
class Context:
    """One validated call in the canonical layout, with its exact scores and weights (see the
    module docstring); ``generator`` seeds every random choice of a sampling method."""

    q: Tensor
    k: Tensor
    v: Tensor
    s: Tensor
    visible: Tensor
    a: Tensor
    kernel: Kernel
    scale: float
    eps: float
    itemsize: int
    generator: torch.Generator

    @property
    def n_visible(self) -> Tensor:
        """(N, H_kv, G, L) keys each query may see."""
        return self.visible.sum(-1)

    @property
    def positions(self) -> Tensor:
        """(S,) key positions 0..S-1."""
        return torch.arange(self.s.shape[-1], device=self.s.device)

    def rand(self) -> Tensor:
        """Uniform [0, 1) noise of the scores' shape from the call's generator."""
        return torch.rand(self.s.shape, generator=self.generator, dtype=self.s.dtype, device="cpu").to(self.s.device)


@dataclass(frozen=True)
class Picked:
    """A selector's choice per query row (shapes (N, H_kv, G, L, S), summary (N, H_kv, G, L))."""

    used: Tensor
    coef: Tensor
    read: Tensor
    summary_bytes: Tensor | float = 0.0
    scores_all: bool = False


@dataclass(frozen=True)
class Selection:
    """What a selector computed and read, per query (B..., H, L) in the caller's layout.

    Attributes:
        output: (B..., H, L, D_v) the sparse output, in the input dtype.
        support: (B..., H, L, k) long key indices in the sum, -1 on unused slots (k = min(top_k, S)).
        weights: (B..., H, L, k) the normalized coefficients c_j / sum c on ``support``.
        rows_used, rows_read: (B..., H, L) long: keys in the sum, full K/V rows loaded.
        summary_bytes, bytes_read: (B..., H, L) float64 (see the module docstring).
        numerator: (B..., H, L, D_v), denominator: (B..., H, L): the ratio's two estimators.
        method: the selector's name; oracle: it scores every key exactly (``scores_all``).
        build_seconds: wall seconds spent building the method's per-key summaries (its
            ``summarize`` hook: what a KV cache computes once when keys are written), not part
            of :func:`timed_select`'s selection time; 0 for methods without the hook.
    """

    output: Tensor
    support: Tensor
    weights: Tensor
    rows_used: Tensor
    rows_read: Tensor
    summary_bytes: Tensor
    bytes_read: Tensor
    numerator: Tensor
    denominator: Tensor
    method: str
    oracle: bool
    build_seconds: float = 0.0


Selector = Callable[..., Picked]


@dataclass(frozen=True)
class _Entry:
    fn: Selector
    softmax_only: bool
    sampled: bool
    options: Mapping[str, object] = field(default_factory=dict)
    summarize: Callable[..., object] | None = None


SELECTORS: dict[str, _Entry] = {}


def register_selector(name: str, fn: Selector, *, softmax_only: bool = False, sampled: bool = False,
                      summarize: Callable[..., object] | None = None) -> Selector:
    """Enrol ``fn(ctx, top_k, **options) -> Picked`` in the harness under ``name``.

    ``summarize(ctx, **options)``: builds the method's per-key summaries (what a KV cache would
    compute once, when the keys are written); the harness calls it before the selection's clock
    and passes its result as ``fn(..., summary=...)``, and reports its time as
    ``Selection.build_seconds``."""
    SELECTORS[name] = _Entry(fn, softmax_only, sampled, summarize=summarize)
    return fn


def _context(query, key, value, kernel, attn_mask, is_causal, scale, enable_gqa, eps, generator, seed):
    kern = get_kernel(kernel)
    p, out_shape = canonicalize(query, key, value, attn_mask, is_causal, scale, enable_gqa, eps, kern)
    dtype = torch.float64 if p.q.dtype == torch.float64 else torch.float32
    q, k, v = p.q.to(dtype), p.k.to(dtype), p.v.to(dtype)
    N, H, G, L, _ = q.shape
    S = k.shape[-2]
    s = (q * p.scale) @ k.transpose(-1, -2)
    vis = torch.ones((N, H, G, L, S), dtype=torch.bool, device=q.device)
    if p.mask is not None:
        vis = vis & p.mask
    if p.is_causal:
        vis = vis & torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
    if kern.exponential:
        m = torch.where(vis, s, -torch.inf).amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, 0.0)
        a = torch.where(vis, torch.exp(torch.where(vis, s - m, -torch.inf)), 0.0)
    else:
        a = torch.where(vis, kern.weights(torch.where(vis, s, 0.0)), 0.0)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else check_int("seed", seed, 0))
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    ctx = Context(q, k, v, s, vis, a, kern, p.scale, p.eps, query.element_size(), generator)
    return ctx, out_shape


def select(query: Tensor, key: Tensor, value: Tensor, *, method: str, top_k: int = 32,
           kernel: str | Kernel = "softmax", attn_mask: Tensor | None = None, is_causal: bool = False,
           scale: float | None = None, enable_gqa: bool = False, eps: float = 1e-6,
           generator: torch.Generator | None = None, seed: int | None = None,
           **options: object) -> Selection:
    """Run the selector ``method`` on an :func:`attnlab.attention` call with a budget of
    ``top_k`` full K/V rows per query; see the module docstring for what is returned.

    ``generator`` (or ``seed``, default 0) drives every random choice: the same seed gives the
    same selection.

    Raises:
        TypeError: ``top_k``/``seed`` not an int, an option the method does not take, or as
            :func:`attnlab.attention`.
        ValueError: unknown ``method``; ``top_k`` < 1; a softmax-only method with another kernel
            (the message names both); a bad option (named); or as :func:`attnlab.attention`.
    """
    return timed_select(query, key, value, method=method, top_k=top_k, kernel=kernel, attn_mask=attn_mask,
                        is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, eps=eps, generator=generator,
                        seed=seed, **options)[0]


def timed_select(query: Tensor, key: Tensor, value: Tensor, *, method: str, top_k: int = 32,
                 kernel: str | Kernel = "softmax", attn_mask: Tensor | None = None, is_causal: bool = False,
                 scale: float | None = None, enable_gqa: bool = False, eps: float = 1e-6,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 **options: object) -> tuple[Selection, float]:
    """:func:`select`, and the wall seconds of the selector's own work: the call of the method on
    the prepared :class:`Context` (exact scores and weights already computed, as every method
    with ``scores_all`` needs them; the output formed afterwards), not counting either.

    Example:
        >>> import torch
        >>> q, k, v = torch.randn(3, 1, 2, 16, 8).unbind(0)
        >>> sel, seconds = timed_select(q, k, v, method="topk", top_k=4)
        >>> tuple(sel.output.shape), seconds >= 0
        ((1, 2, 16, 8), True)

    Raises:
        as :func:`select`.
    """
    import time

    if method not in SELECTORS:
        raise ValueError(f"method must be one of {sorted(SELECTORS)}, got {method!r}")
    entry = SELECTORS[method]
    top_k = check_int("top_k", top_k, 1)
    kern = get_kernel(kernel)
    if entry.softmax_only and not kern.exponential:
        raise ValueError(f"method {method!r} is defined for the softmax kernel only, got kernel {kern.name!r}")
    with torch.no_grad():
        ctx, out_shape = _context(query, key, value, kern, attn_mask, is_causal, scale, enable_gqa, eps,
                                  generator, seed)
        build = 0.0
        if entry.summarize is not None:
            t0 = time.perf_counter()
            options = {**options, "summary": entry.summarize(ctx, **options)}
            build = time.perf_counter() - t0
        t0 = time.perf_counter()
        picked = entry.fn(ctx, top_k, **options)
        seconds = time.perf_counter() - t0
        return _finish(ctx, picked, top_k, out_shape, method, query.dtype, build), seconds


def _finish(ctx: Context, pk: Picked, top_k: int, out_shape, method: str, dtype, build: float = 0.0) -> Selection:
    vis, a = ctx.visible, ctx.a
    n_vis = ctx.n_visible
    full = (n_vis <= top_k).unsqueeze(-1)  # the row may read every key it sees: exact attention
    used = torch.where(full, vis, pk.used & vis)
    read = torch.where(full, vis, (pk.read | pk.used) & vis)
    coef = torch.where(full, a, torch.where(used, pk.coef, 0.0))
    num = coef @ ctx.v
    den = coef.sum(-1)
    z = den if ctx.kernel.exponential else den + ctx.eps
    out = num / torch.where(den > 0, z, 1.0).unsqueeze(-1)
    rows_read = read.sum(-1)
    summary = torch.as_tensor(pk.summary_bytes, dtype=torch.float64, device=a.device).expand(n_vis.shape)
    summary = torch.where(full.squeeze(-1), 0.0, summary)
    D, Dv = ctx.q.shape[-1], ctx.v.shape[-1]
    bytes_read = rows_read.double() * (D + Dv) * ctx.itemsize + summary
    if pk.scores_all:
        bytes_read = bytes_read + (n_vis - rows_read).double() * D * ctx.itemsize
    kk = min(top_k, ctx.s.shape[-1])
    key = torch.where(used, coef + 1.0, 0.0)  # used keys first, heaviest first
    val, sup = key.topk(kk, dim=-1)
    sup = torch.where(val > 0, sup, -1)
    w = torch.where(sup >= 0, coef.gather(-1, sup.clamp_min(0)), 0.0)
    w = w / torch.where(den > 0, den, 1.0).unsqueeze(-1)

    lead = out_shape[:-1]

    def back(x: Tensor, tail: tuple[int, ...] = ()) -> Tensor:
        return x.reshape(*lead, *tail)

    return Selection(
        output=back(out, (out.shape[-1],)).to(dtype),
        support=back(sup, (kk,)),
        weights=back(w, (kk,)),
        rows_used=back(used.sum(-1)),
        rows_read=back(rows_read),
        summary_bytes=back(summary.clone()),
        bytes_read=back(bytes_read),
        numerator=back(num, (num.shape[-1],)),
        denominator=back(den),
        method=method,
        oracle=pk.scores_all,
        build_seconds=build,
    )


def make_approximation(name: str) -> Callable[..., Tensor]:
    """The :func:`attnlab.approx.approximate_attention` entry of selector ``name``: the
    (B..., H, L, D_v) output of :func:`select` (no gradient: the selectors are for measurement)."""

    def approximation(query: Tensor, key: Tensor, value: Tensor, *, top_k: int = 32,
                      kernel: str | Kernel = "softmax", attn_mask: Tensor | None = None,
                      is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
                      eps: float = 1e-6, generator: torch.Generator | None = None, seed: int | None = None,
                      **options: object) -> Tensor:
        return select(query, key, value, method=name, top_k=top_k, kernel=kernel, attn_mask=attn_mask,
                      is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, eps=eps, generator=generator,
                      seed=seed, **options).output

    fn = SELECTORS[name].fn
    # the signature shows (and approximate_attention checks) the method's own options by name
    base = [p for p in inspect.signature(approximation).parameters.values() if p.kind is not p.VAR_KEYWORD]
    own = [p for p in list(inspect.signature(fn).parameters.values())[2:]  # after ctx, top_k
           if p.name != "summary"]  # the harness builds it
    approximation.__signature__ = inspect.Signature(base + own, return_annotation=Tensor)
    approximation.__name__ = approximation.__qualname__ = name.replace("-", "_") + "_attention"
    approximation.__module__ = fn.__module__
    approximation.__doc__ = (f"Selector {name!r} through :func:`attnlab.approx.selectors.select` "
                             f"(budget ``top_k`` full K/V rows per query).\n\n{fn.__doc__ or ''}")
    return approximation
