"""Approximations of attention.

Two families, each with a registry by name:

- practical methods with :func:`attnlab.attention`'s signature (``topk``, ``performer``,
  ``elu-linear``, ``cosformer``, ``nystrom``; ``linear`` is elu-linear's deprecated alias):
  :func:`approximate_attention`;
- r-sparse oracles for analysis, which need the exact weights (``topr``, ``topr-l2``,
  ``va-greedy``, ``va-swap``, ``va-exact``, ``omp``): :func:`approximate_output` on (p, V), and
  :func:`oracle_attention` with :func:`attnlab.attention`'s signature.
"""

from .oracles import approximate_output, available_oracles, get_oracle, oracle_attention
from .registry import (
    approximate_attention,
    available_approximations,
    get_approximation,
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
    "oracle_attention",
    "register_approximation",
]
