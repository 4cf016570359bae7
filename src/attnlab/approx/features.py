"""Feature-map (linear-time) attention: performer, elu-linear, cosformer.

Each method maps queries and keys to non-negative features phi and computes (shapes: see
:mod:`attnlab.functional`; F = number of features)::

    o_i = sum_j (phi(q_i) . phi(k_j)) v_j / (sum_j phi(q_i) . phi(k_j) + eps)

in O((L + S) F D_v) time by associativity: phi(Q) (phi(K)^T V) over phi(Q) (phi(K)^T 1).
Under ``is_causal`` (query i sees keys j <= i) the sums become prefix sums, computed chunk by
chunk (:func:`feature_attention`): quadratic with a causal triangle inside a chunk, a running
(F, D_v) state across chunks. The engine is the one the exact ``linear`` backend uses
(:mod:`attnlab.backends._features`), with a backward that recomputes per chunk.

- ``performer`` (FAVOR+, Choromanski et al. 2021): phi(x) = exp(w_r . x' - abs(x')^2 / 2) /
  sqrt(F) with x' = sqrt(scale) x and random w_r; phi(q).phi(k) is an unbiased estimate of
  exp(scale q.k), so this approximates softmax attention (only softmax). Causal: yes.
- ``elu-linear`` (Katharopoulos et al. 2020; ``linear`` before, a deprecated alias now, since
  ``linear`` is also the exact squared-kernel backend): phi(x) = elu(x) + 1. Defines its own
  kernel phi(q).phi(k) (no ``scale``). Causal: yes.
- ``cosformer`` (Qin et al. 2022): phi(x_i) = [relu(x_i) cos t_i, relu(x_i) sin t_i] with
  t_i = pi i / (2M), M = max(L, S). Defines its own kernel relu(q_i).relu(k_j) cos(t_i - t_j)
  (no ``scale``). Causal: yes.

A bool ``attn_mask`` is honoured when it is a key-padding mask (its query dim is 1, shape
broadcastable to (B..., H, 1, S)): masked keys get phi = 0. Any other mask raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int, deprecated_alias
from ..backends import chunked_feature_attention
from ..problem import AttentionProblem as Problem
from ..signature import attention_signature

__all__ = [
    "cosformer_attention",
    "elu_linear_attention",
    "feature_attention",
    "linear_attention",
    "orthogonal_random_features",
    "performer",
    "performer_attention",
]


def feature_attention(
    phi_q: Tensor,
    phi_k: Tensor,
    value: Tensor,
    *,
    is_causal: bool = False,
    eps: float = 1e-6,
    chunk_size: int = 64,
) -> Tensor:
    """Attention with kernel phi(q).phi(k), given the features, in linear time.

    Args:
        phi_q: (..., L, F) non-negative query features.
        phi_k: (..., S, F) non-negative key features (zero rows remove keys).
        value: (..., S, D_v); the leading dims of all three broadcast.
        is_causal: query i sees keys j <= i, computed chunk-wise with a running state.
        eps: added to each normalizer; a row whose normalizer is 0 returns zeros.
        chunk_size: positions per chunk in the causal form (sets memory, not the result).

    Returns:
        (..., L, D_v).

    Raises:
        ValueError: feature counts or key lengths that do not match; ``chunk_size`` < 1.
    """
    check_int("chunk_size", chunk_size, 1)
    if phi_q.shape[-1] != phi_k.shape[-1] or phi_k.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"phi_q (..., L, F), phi_k (..., S, F) and value (..., S, D_v) do not fit: got "
            f"{tuple(phi_q.shape)}, {tuple(phi_k.shape)}, {tuple(value.shape)}"
        )
    v1 = torch.cat([value, value.new_ones((*value.shape[:-1], 1))], dim=-1)  # last column: normalizer
    y = chunked_feature_attention(phi_q, phi_k, v1, phi_q=_identity, phi_k=_identity, is_causal=is_causal,
                                  chunk_size=chunk_size)
    return _normalize(y, eps)


def _identity(x: Tensor) -> Tensor:
    return x


def _normalize(num_and_sum: Tensor, eps: float) -> Tensor:
    z = num_and_sum[..., -1:] + eps
    return num_and_sum[..., :-1] / torch.where(z > 0, z, 1.0)


def orthogonal_random_features(
    num_features: int, dim: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> Tensor:
    """(num_features, dim) Gaussian directions, orthogonal within blocks of ``dim`` rows.

    Each block is the Q factor of a Gaussian matrix (signs fixed by diag(R), so it is Haar
    distributed); each row is rescaled to the norm of an independent Gaussian vector, so that
    every row is marginally N(0, I) as FAVOR+ needs (Choromanski et al. 2021, sec. 2.4).
    """
    blocks = math.ceil(num_features / dim)
    g = torch.randn(blocks, dim, dim, generator=generator, dtype=torch.float64)
    qm, r = torch.linalg.qr(g)
    qm = qm * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    rows = qm.transpose(-1, -2).reshape(blocks * dim, dim)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (rows * norms[:, None]).to(dtype)


def _key_padding(method: str, problem: Problem) -> Tensor | None:
    """The keys every query keeps, (n, h, g, S|1, 1), from a key-padding mask (None: all)."""
    if problem.mask is None:
        return None
    if problem.mask.shape[3] != 1:
        raise ValueError(
            f"attn_mask: method {method!r} honours only key-padding masks (broadcastable to "
            f"(B..., H, 1, S)), got one that varies over queries (shape {tuple(problem.mask.shape)} "
            "in the canonical (N, H_kv, G, L, S) layout)"
        )
    return problem.mask.transpose(-1, -2)


def _finish(problem: Problem, method: str, phi_q: Tensor, phi_k: Tensor, chunk_size: int) -> Tensor:
    """The feature-map attention of ``problem``: (N, H_kv, G, L, D_v) in the input dtype."""
    keep = _key_padding(method, problem)
    if keep is not None:
        phi_k = phi_k * keep
    out = feature_attention(
        phi_q, phi_k, problem.v.to(phi_q.dtype), is_causal=problem.is_causal, eps=problem.eps, chunk_size=chunk_size
    )
    return out.to(problem.q.dtype)


def performer(
    problem: Problem,
    *,
    num_features: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = 64,
) -> Tensor:
    """FAVOR+ softmax attention with positive orthogonal random features (see the module doc).

    phi(x) = exp(W x' - abs(x')^2/2 - c) / sqrt(F) with x' = sqrt(scale) x and W from
    :func:`orthogonal_random_features`; E[phi(q).phi(k)] = exp(scale q.k) up to the constants
    c (a per-query row maximum and one maximum over all keys), which cancel in the ratio.
    Features are drawn once per call, shared by batch and heads; redraw by changing ``seed``.
    ``eps`` is added to the normalizer after the constants c are taken out, so it acts on a
    rescaled sum (pass ``eps=0`` for the plain ratio). The core ``performer(problem, ...)``
    returns (N, H_kv, G, L, D_v); :func:`performer_attention` takes :func:`attnlab.attention`'s arguments.

    Args:
        kernel: must be ``"softmax"`` (the only kernel FAVOR+ estimates).
        num_features: F, default round(D ln D) (at least D).
        seed: seed of the feature draw (default 0); exclusive with ``generator``.
        generator: a CPU torch.Generator to draw from instead (advanced by the call).
        chunk_size: positions per chunk in the causal prefix-sum form.
        Other arguments: as :func:`attnlab.attention`.

    Raises:
        ValueError: a kernel other than softmax; a mask that is not key padding; both
            ``seed`` and ``generator``; ``num_features``/``chunk_size`` < 1.
        TypeError: ``num_features``, ``seed`` or ``generator`` of the wrong type.
    """
    p = problem
    if not p.kernel.exponential:
        raise ValueError(f"kernel: method 'performer' approximates softmax only, got {p.kernel.name!r}")
    if num_features is not None:
        check_int("num_features", num_features, 1)
    check_int("chunk_size", chunk_size, 1)
    if seed is not None and generator is not None:
        raise ValueError("seed and generator: pass at most one of them to method 'performer'")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        check_int("seed", seed)
    _key_padding("performer", p)  # before the draw
    D = p.q.shape[-1]
    m = num_features or max(D, round(D * math.log(D)))
    gen = generator or torch.Generator().manual_seed(0 if seed is None else seed)
    dtype = p.compute_dtype
    w = orthogonal_random_features(m, D, generator=gen, dtype=dtype).to(p.q.device)
    root = math.sqrt(p.scale)
    q, k = p.q.to(dtype) * root, p.k.to(dtype) * root
    wq = q @ w.T - q.square().sum(-1, keepdim=True) / 2
    wk = k @ w.T - k.square().sum(-1, keepdim=True) / 2
    phi_q = torch.exp(wq - wq.detach().amax(dim=-1, keepdim=True)) / math.sqrt(m)
    phi_k = torch.exp(wk - wk.detach().amax(dim=(-2, -1), keepdim=True)) / math.sqrt(m)
    return _finish(p, "performer", phi_q, phi_k, chunk_size)


performer_attention = attention_signature(performer, name="performer_attention")


def _own_kernel_method(name: str, method: str, features: Callable[[Problem], tuple[Tensor, Tensor]],
                       doc: str) -> Callable[..., Tensor]:
    """A method whose features define its own kernel (no ``kernel``; ``scale`` must stay None):
    one core for ``elu-linear`` and ``cosformer``; ``features(problem)`` returns (phi_q, phi_k)."""

    def core(problem: Problem, *, chunk_size: int = 64) -> Tensor:
        check_int("chunk_size", chunk_size, 1)
        _key_padding(method, problem)
        return _finish(problem, method, *features(problem), chunk_size)

    core.__name__ = core.__qualname__ = method.replace("-", "_")
    return attention_signature(core, method=method, name=name, doc=doc, own_kernel=True)


def _elu_features(p: Problem) -> tuple[Tensor, Tensor]:
    dtype = p.compute_dtype
    return F.elu(p.q.to(dtype)) + 1.0, F.elu(p.k.to(dtype)) + 1.0


def _cosformer_features(p: Problem) -> tuple[Tensor, Tensor]:
    dtype = p.compute_dtype
    M = max(p.q.shape[-2], p.k.shape[-2], 1)

    def phi(x: Tensor) -> Tensor:
        t = torch.arange(x.shape[-2], device=x.device, dtype=dtype)[:, None] * (math.pi / (2 * M))
        r = torch.relu(x.to(dtype))
        return torch.cat([r * torch.cos(t), r * torch.sin(t)], dim=-1)

    return phi(p.q), phi(p.k)


elu_linear_attention = _own_kernel_method("elu_linear_attention", "elu-linear", _elu_features, """\
Linear attention with phi(x) = elu(x) + 1 (Katharopoulos et al. 2020): method ``elu-linear``.

    The kernel is phi(q).phi(k), not an approximation of softmax; ``scale`` must stay None.
    Causal and key-padding masks are supported; arguments as :func:`performer_attention`.

    Raises:
        ValueError: ``scale`` given; a mask that is not key padding; ``chunk_size`` < 1.
    """)

cosformer_attention = _own_kernel_method("cosformer_attention", "cosformer", _cosformer_features, """\
cosFormer attention (Qin et al. 2022): relu features re-weighted by position.

    Weight of key j for query i: relu(q_i).relu(k_j) cos(pi (i - j) / (2M)), M = max(L, S),
    positive since abs(i - j) < M; computed from the 2D features of the module doc by
    cos(a - b) = cos a cos b + sin a sin b. Positions are 0-based and aligned top-left, as
    ``is_causal``. ``scale`` must stay None.

    Raises:
        ValueError: ``scale`` given; a mask that is not key padding; ``chunk_size`` < 1.
    """)

#: Deprecated (the exact ``linear`` backend has the name): :func:`elu_linear_attention`, also
#: registered as method ``linear`` so that ``method="linear"`` keeps working, with a warning.
linear_attention = deprecated_alias(
    elu_linear_attention, "linear_attention",
    "approximation 'linear' (attnlab.approx.features.linear_attention) is deprecated: it is named "
    "'elu-linear' (elu_linear_attention) now, as backend 'linear' is the exact squared kernel")
