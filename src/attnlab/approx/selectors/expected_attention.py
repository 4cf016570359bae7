"""Expected Attention (Devoto et al. 2025, kvpress "Expected Attention: KV cache compression by
estimating attention from future queries distribution"), softmax only.

Future queries are modelled as Gaussian, q ~ N(mu, Sigma), and a key's expected unnormalized
weight has the closed form of the Gaussian moment generating function:

    E[exp(scale * q . k_j)] = exp(scale * mu . k_j + scale^2 / 2 * k_j^T Sigma k_j)

The score is the expected weight normalized over the visible keys times ||v_j||_2, and the
``top_k`` visible keys of largest score are kept, renormalized with the current weights. Here
mu and the diagonal Sigma are the mean and variance of the last ``n_queries`` queries up to and
including the current one (kvpress averages over a window of recent queries and their RoPE
rotations; attnlab has no positions, so none). ``n_queries=1`` gives Sigma = 0, mu = q: score =
a_j * ||v_j||_2. The Gaussian MGF is an identity for exp only, so other kernels are refused.
Summary: every key (``scores_all``), one float32 value norm per visible key.
"""

from __future__ import annotations

import torch

from ..._checks import check_int
from .blocks import key_bytes, take
from .harness import Context, Picked


def expected_attention(ctx: Context, top_k: int, *, n_queries: int = 16) -> Picked:
    """Top-k by expected future attention x ||v||_2 (see the module docstring)."""
    n = check_int("n_queries", n_queries, 1)
    q = ctx.q
    L = q.shape[-2]
    c1 = torch.nn.functional.pad(q.cumsum(-2), (0, 0, 1, 0))
    c2 = torch.nn.functional.pad((q * q).cumsum(-2), (0, 0, 1, 0))
    hi = torch.arange(1, L + 1, device=q.device)
    lo = (hi - n).clamp_min(0)
    cnt = (hi - lo).to(q.dtype).unsqueeze(-1)
    mu = (c1[..., hi, :] - c1[..., lo, :]) / cnt
    var = ((c2[..., hi, :] - c2[..., lo, :]) / cnt - mu * mu).clamp_min(0)
    k = ctx.k
    logit = ctx.scale * mu @ k.transpose(-1, -2) + 0.5 * ctx.scale**2 * var @ (k * k).transpose(-1, -2)
    logit = torch.where(ctx.visible, logit, -torch.inf)
    m = logit.amax(-1, keepdim=True)
    expw = torch.where(ctx.visible, torch.exp(logit - torch.where(torch.isfinite(m), m, 0.0)), 0.0)
    score = expw * ctx.v.norm(dim=-1).unsqueeze(-2)
    used = take(score, ctx.visible, top_k)
    return Picked(used=used, coef=ctx.a, read=used, scores_all=True, summary_bytes=key_bytes(ctx, 4.0))
