"""Quest (Tang et al. 2024, "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
Inference"): page-level top-k from per-page min/max keys.

Keys are cut into pages of ``page_size`` positions; each page keeps the elementwise minimum and
maximum of its keys (its summary, 2 * D numbers). For a query q the score of every key j of page
P is bounded by

    U_P = scale * sum_d max(q_d kmin_d, q_d kmax_d)  >=  s_j  >=  scale * sum_d min(q_d kmin_d, q_d kmax_d) = L_P

Pages are ranked by the bound on the *weight*: U_P for softmax (exp is increasing); for another
kernel max(f(L_P), f(U_P)), an exact upper bound of f on [L_P, U_P] for every kernel that is
monotone in s or in |s| (all built-ins: expressive and squared grow with |s|, relu with s). The
visible keys of the best pages are loaded, page after page in that order and by position within a
page, until ``top_k`` rows are read (Quest's budget is a whole number of pages: pass a multiple
of ``page_size`` for the paper's setting; a remainder loads the first keys of the next page), and
the output is renormalized over them. Summary bytes: 2 * D * itemsize per page that holds a
visible key. Page bounds span every key of a page (in causal prefill a page may hold later keys:
the bound stays valid for the visible ones). Value-oblivious.
"""

from __future__ import annotations

import torch

from ..._checks import check_int
from .blocks import take
from .harness import Context, Picked


def quest(ctx: Context, top_k: int, *, page_size: int = 16) -> Picked:
    """Page top-k by the min/max key bound (see the module docstring)."""
    P = check_int("page_size", page_size, 1)
    S = ctx.s.shape[-1]
    n_pages = -(-S // P)
    pad = n_pages * P - S
    k = ctx.k  # (N, H, 1, S, D)
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad), value=torch.nan)
    kp = kp.reshape(*k.shape[:-2], n_pages, P, k.shape[-1])
    kmax = torch.where(kp.isnan(), -torch.inf, kp).amax(-2)
    kmin = torch.where(kp.isnan(), torch.inf, kp).amin(-2)
    q = ctx.q * ctx.scale
    qp, qn = q.clamp_min(0), q.clamp_max(0)
    upper = qp @ kmax.transpose(-1, -2) + qn @ kmin.transpose(-1, -2)  # (N, H, G, L, n_pages)
    lower = qp @ kmin.transpose(-1, -2) + qn @ kmax.transpose(-1, -2)
    crit = upper if ctx.kernel.exponential else torch.maximum(ctx.kernel.weights(lower), ctx.kernel.weights(upper))
    visp = torch.nn.functional.pad(ctx.visible, (0, pad)).reshape(*ctx.visible.shape[:-1], n_pages, P).any(-1)
    crit = torch.where(visp, crit, -torch.inf)
    order = crit.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(n_pages, device=crit.device).expand_as(order).contiguous()
    page_rank = torch.empty_like(order).scatter_(-1, order, ranks)
    pos = torch.arange(S, device=crit.device)
    key_rank = page_rank[..., pos // P] * S + pos  # load order: page rank, then position
    used = take(-key_rank.to(ctx.s.dtype), ctx.visible, top_k)
    summary = visp.sum(-1).double() * 2 * k.shape[-1] * ctx.itemsize
    return Picked(used=used, coef=ctx.a, read=used, summary_bytes=summary)
