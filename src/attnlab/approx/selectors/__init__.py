"""Sparse selectors under a KV budget, measured against the value-aware optimum (issue 14,
DESIGN.md section 10).

Every selector reads at most ``top_k`` full key/value rows per query plus its summaries; the
harness (:mod:`.harness`) forms the output and counts rows and bytes. :func:`select` returns a
:class:`Selection` (output, support, weights, rows used/read, bytes, the ratio's numerator and
denominator); :func:`compare` measures methods against oracle top-k and ``va-greedy``.
Each selector except ``topk`` (already registered as the trainable
:func:`attnlab.approx.topk.topk_attention`) is also a registered approximation:
``approximate_attention(q, k, v, method=name, top_k=...)``.

| name | source | keeps | kernels |
|---|---|---|---|
| ``topk`` | Gupta et al. 2021 | top_k by a_j (harness reference) | any |
| ``quest`` | Tang et al. 2024 | pages by sum_d max(q_d kmin_d, q_d kmax_d) | any (bound of f) |
| ``h2o`` | Zhang et al. 2023 | recent window + top accumulated attention of earlier queries | any |
| ``streaming-llm`` | Xiao et al. 2024 | sinks + sliding window | any |
| ``vatp`` | Guo et al. 2024 | top_k by a_j ||v_j||_1 | any |
| ``caote`` | Goel et al. 2025 | top_k by alpha_j / (1 - alpha_j) ||o - v_j||, exact o | any |
| ``caote-est`` | Goel et al. 2025 | same with o from the head and a value sketch | any |
| ``expected-attention`` | Devoto et al. 2025 | top_k by E_q[exp(s_j)] ||v_j||_2, Gaussian q | softmax |
| ``vattention`` | Desai et al. 2025 | sinks + window + top + uniform tail, weights m / n_s | any |
| ``magicpig`` | Chen et al. 2025 | sinks + window + SimHash sample, weights 1 / u_j | softmax |
| ``va-select`` | attnlab | head + o_hat estimate + value-aware refit | any |
"""

from __future__ import annotations

from .caote import caote, caote_est
from .compare import compare
from .expected_attention import expected_attention
from .h2o import h2o
from .harness import SELECTORS, Context, Picked, Selection, make_approximation, register_selector, select, timed_select
from .magicpig import magicpig
from .quest import quest
from .streaming import streaming_llm
from .topk import topk
from .va_select import va_select, va_sketch
from .vatp import vatp
from .vattention import vattention

__all__ = [
    "REGISTERED",
    "SELECTORS",
    "Context",
    "Picked",
    "Selection",
    "compare",
    "make_approximation",
    "register_selector",
    "select",
    "timed_select",
]

for _name, _fn, _softmax, _sampled in [
    ("topk", topk, False, False),
    ("quest", quest, False, False),
    ("h2o", h2o, False, False),
    ("streaming-llm", streaming_llm, False, False),
    ("vatp", vatp, False, False),
    ("caote", caote, False, False),
    ("caote-est", caote_est, False, True),
    ("expected-attention", expected_attention, True, False),
    ("vattention", vattention, False, True),
    ("magicpig", magicpig, True, True),
    ("va-select", va_select, False, False),
]:
    register_selector(_name, _fn, softmax_only=_softmax, sampled=_sampled,
                      summarize=va_sketch if _fn is va_select else None)

#: The selectors registered as approximations (``topk`` is registered already, trainable).
REGISTERED = [name for name in SELECTORS if name != "topk"]

del _name, _fn, _softmax, _sampled
