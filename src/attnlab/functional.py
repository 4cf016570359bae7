"""``attention()``: exact kernelized attention with the call signature of torch's SDPA.

Shape legend, used throughout attnlab: ``B...`` any number of leading batch dims, ``H`` query
heads, ``H_kv`` key/value heads, ``L`` queries, ``S`` keys, ``D`` query/key dim, ``D_v`` value
dim. A boolean ``attn_mask`` is True where a query may attend to a key.
"""

from __future__ import annotations

from torch import Tensor

from ._problem_checks import check_flag, draw_dropout_seed  # noqa: F401  (draw_dropout_seed: old home)
from .backends import Problem, select_backend
from .backends.reference import reference_attention
from .kernels import Kernel
from .problem import build_problem, run_hiding_unseen_keys

__all__ = ["attention", "expressive_attention"]


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    kernel: str | Kernel = "softmax",
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    eps: float = 1e-6,
    backend: str = "auto",
    return_weights: bool = False,
    dropout_p: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention under a similarity kernel, laid out like ``scaled_dot_product_attention``.

    With s = scale * q.k and f the kernel (``attnlab.kernels``), each query's output is
    ``sum_j f(s_j) v_j / (sum_j f(s_j) + eps)`` over the keys it may see (softmax: the usual
    max-shifted softmax, no eps). A key is removed by zeroing its weight, never by adding -inf
    to s. A query that sees no key, or whose weights are all zero, gets a zero output row and
    finite gradients.

    Masked keys are inert: a key hidden from a query (by ``attn_mask`` or ``is_causal``) never
    contributes to that query's output, whatever the key holds (NaN or +-inf included). A key
    hidden from every query of its batch element and key/value head (padding) is inert in full:
    NaN or +-inf in its key or its value reaches no output and no gradient (its dk and dv are 0).
    Not covered: a non-finite value of a key that some query sees still reaches the queries it
    is hidden from (0 * NaN = NaN in the weighted sum), and a non-finite key may make their dq NaN.

    Args:
        query: (B..., H, L, D), float16/bfloat16/float32/float64.
        key: (B..., H_kv, S, D), same dtype and device as ``query``.
        value: (B..., H_kv, S, D_v).
        kernel: a registered kernel name (``softmax``, ``expressive``, ``squared``, ``relu``,
            ``relu2``, or one added by ``attnlab.kernels.register_kernel``) or a Kernel.
        attn_mask: optional bool tensor broadcastable to (B..., H, L, S); True = may attend.
        is_causal: query i sees keys j <= i (aligned top-left, as SDPA documents). May be
            combined with ``attn_mask`` (both must allow a key), which SDPA does not allow.
        scale: score scale, default 1/sqrt(D).
        enable_gqa: allow H to be a multiple of H_kv (grouped-query attention).
        eps: added to the normalizer of non-exponential kernels, >= 0.
        backend: ``"auto"`` (see ``attnlab.backends.resolve_backend``) or a registered name:
            ``reference``, ``chunked``, ``cpp`` (fused C++ CPU kernels; expressive, squared,
            relu, relu2), ``sdpa`` (softmax only), ``linear`` (squared only), and where
            registered ``flex`` and ``triton`` (see ``attnlab.backends.available_backends()``).
        return_weights: also return the normalized weights (B..., H, L, S); needs the
            ``reference`` backend (``auto`` picks it). With dropout these are the weights
            before dropout (they sum to 1 per row); the output uses the dropped ones.
        dropout_p: attention dropout, a real number in [0, 1), as in SDPA: each normalized
            weight is zeroed with probability ``dropout_p`` and the kept ones are scaled by
            1 / (1 - dropout_p), so ``out = dropout(p) @ v``. The mask comes from a
            counter-based hash of (seed, query row, key), with the seed drawn from torch's
            generator of the inputs' device at each call (``torch.manual_seed`` makes it
            reproducible); ``reference``, ``chunked`` and ``cpp`` draw the same mask for the
            same seed, other backends refuse dropout (``auto`` avoids them). Pass it only in
            training (``dropout_p=p if module.training else 0.0``); 0 changes nothing.

    Returns:
        The output (B..., H, L, D_v) in the input dtype, and the weights when asked for.

    Raises:
        TypeError: an argument has the wrong type (tensor, dtype, mask dtype, flag, number).
        ValueError: shapes, devices, names or values that do not fit (``dropout_p`` outside
            [0, 1)); a backend that cannot honour the kernel, ``return_weights`` or dropout.

    Example:
        >>> import torch, attnlab
        >>> q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)
        >>> out = attnlab.attention(q, k, v, kernel="expressive", is_causal=True)
        >>> out.shape
        torch.Size([2, 4, 16, 8])
        >>> out, w = attnlab.attention(q, k, v, kernel="expressive", return_weights=True)
        >>> torch.allclose(w.sum(-1), torch.ones(2, 4, 16), atol=1e-4)
        True
    """
    problem = build_problem(query, key, value, kernel=kernel, attn_mask=attn_mask, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa, eps=eps, dropout_p=dropout_p,
                            defer_finite_check=True)
    return_weights = check_flag("return_weights", return_weights)
    chosen = select_backend(backend, problem, return_weights=return_weights)
    if return_weights:
        out, weights = run_hiding_unseen_keys(lambda p: reference_attention(p, return_weights=True), problem)
        return problem.with_out_shape(out), weights.reshape((*problem.out_shape[:-1], weights.shape[-1]))
    return problem.with_out_shape(run_hiding_unseen_keys(chosen.run, problem))


def expressive_attention(query: Tensor, key: Tensor, value: Tensor, **kwargs) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`attention` with ``kernel="expressive"``: weights s^2 / (1 + s^2), normalized.

    Example:
        >>> import torch, attnlab
        >>> q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
        >>> a = attnlab.expressive_attention(q, k, v)
        >>> torch.allclose(a, attnlab.expressive_attention(-q, k, v), atol=1e-6)  # q -> -q
        True
    """
    if "kernel" in kwargs:
        raise TypeError("expressive_attention() fixes kernel='expressive'; use attention() instead")
    return attention(query, key, value, kernel="expressive", **kwargs)


def canonicalize(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float | None,
    enable_gqa: bool, eps: float, kernel: Kernel, *, dropout_p: float = 0.0, defer_finite_check: bool = False,
) -> tuple[Problem, tuple[int, ...]]:
    """The old positional front door: :func:`attnlab.problem.build_problem` and its output shape.

    Raises:
        TypeError, ValueError: as :func:`attention`.
    """
    problem = build_problem(query, key, value, kernel=kernel, attn_mask=attn_mask, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa, eps=eps, dropout_p=dropout_p,
                            defer_finite_check=defer_finite_check)
    return problem, problem.out_shape
