"""Approximations of attention.

Two families, each a registry of capability records (:class:`attnlab.methods.MethodRecord`):

- practical methods with :func:`attnlab.attention`'s signature (``topk``, ``performer``,
  ``linear``, ``cosformer``, ``nystrom``, the sparse selectors): :func:`approximate_attention`;
  each is a core ``fn(problem, **options)`` that :func:`attnlab.signature.attention_signature`
  gives attention()'s parameters; add one with :func:`register_approximation`, read its record
  with :func:`get_record`;
- r-sparse oracles for analysis, which need the exact weights (``topr``, ``topr-l2``,
  ``va-greedy``, ``va-swap``, ``va-exact``, ``omp``): :func:`approximate_output` on (p, V), and
  :func:`oracle_attention` with :func:`attnlab.attention`'s signature; add one with
  :func:`register_oracle`, read its record with :func:`get_oracle_record`.
"""

from .oracles import (
    approximate_output,
    available_oracles,
    get_oracle,
    get_oracle_record,
    oracle_attention,
    oracle_family,
    register_oracle,
)
from .registry import (
    approximate_attention,
    available_approximations,
    get_approximation,
    get_record,
    register_approximation,
)
from .sparse import SparseApprox

__all__ = [
    "SparseApprox",
    "approximate_attention",
    "approximate_output",
    "available_approximations",
    "available_oracles",
    "get_approximation",
    "get_oracle",
    "get_oracle_record",
    "get_record",
    "oracle_attention",
    "oracle_family",
    "register_approximation",
    "register_oracle",
]
