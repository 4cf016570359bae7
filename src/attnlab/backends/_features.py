"""The one engine of linear-time attention through feature maps, shared by the ``linear``
backend (the squared kernel's exact degree-2 features) and the feature approximations of
:mod:`attnlab.approx.features` (performer, elu+1, cosFormer).

With features phi_q, phi_k (F per position) and the values extended by a column of ones,
v1 = [v, 1], every query's numerator and normalizer come from one (F, D_v + 1) state::

    P = sum_j phi_k(k_j) v1_j^T,    y_i = [num_i, z_i] = phi_q(q_i) P.

Non-causal: one state over all keys. Causal (query i sees keys j <= i): chunks of C positions;
inside a chunk the quadratic weights ``intra(q, k)`` (by default phi_q(q) . phi_k(k)) with the
causal triangle, plus phi_q times the state of the chunks before it. The features are computed
chunk by chunk and never for all positions at once (the squared kernel has D (D + 1) / 2 of
them). The autograd Function saves the inputs and the state before each chunk and recomputes
each chunk's features in backward, where autograd differentiates one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._common import causal_visible, first_order_backward, fresh

__all__ = ["FeatureMap", "chunked_feature_attention"]

FeatureMap = Callable[[Tensor], Tensor]
"""(..., n, D) -> (..., n, F); differentiable; applied position-wise (to any chunk)."""
IntraWeights = Callable[[Tensor, Tensor], Tensor]
"""(q (..., Lc, D), k (..., Sc, D)) -> weights (..., Lc, Sc) equal to phi_q(q) . phi_k(k)."""


def chunked_feature_attention(
    q: Tensor, k: Tensor, v1: Tensor, *, phi_q: FeatureMap, phi_k: FeatureMap, is_causal: bool,
    chunk_size: int, keep: Tensor | None = None, intra: IntraWeights | None = None,
) -> Tensor:
    """[num, z] of every query: (..., L, D_v + 1), leading dims broadcast.

    Args:
        q: (..., L, D) inputs of ``phi_q``; k: (..., S, D) inputs of ``phi_k``.
        v1: (..., S, D_v + 1) the values with a last column of ones.
        phi_q, phi_k: the feature maps.
        is_causal: query i sees keys j <= i.
        chunk_size: positions per chunk (memory and speed, not the result).
        keep: None or a (..., S, 1) multiplier per key (0 removes a key).
        intra: the in-chunk weights, when cheaper than through the features.
    """
    return _FeatureAttention.apply(q, k, v1, keep, phi_q, phi_k, intra, is_causal, chunk_size)


def _state(phi_k: FeatureMap, k: Tensor, v1: Tensor, keep: Tensor | None) -> Tensor:
    """The state increment phi_k(k)^T v1 of a chunk of keys, removed keys zeroed."""
    f = phi_k(k)
    if keep is not None:
        f = torch.where(keep != 0, f * keep, 0.0)  # selected: a removed key may be NaN or inf
    return f.transpose(-1, -2) @ v1


def _chunk_output(fq, q, k, v1, state, keep, cfg, i0: int, i1: int) -> Tensor:
    """[num, z] of queries i0:i1 (a causal chunk; fq = phi_q(q)): the state of the earlier
    chunks, plus the chunk's own keys k (positions i0..) under the causal triangle."""
    _, phi_k, intra = cfg
    y = fq @ state
    if k.shape[-2] == 0:
        return y
    a = intra(q, k) if intra is not None else fq @ phi_k(k).transpose(-1, -2)
    visible = causal_visible(i0, i1, i0 + k.shape[-2], q.device)[:, i0:]
    a = torch.where(visible, a, 0.0)  # selected, not multiplied: a future key may be NaN or inf
    if keep is not None:
        kt = keep.transpose(-1, -2)
        a = torch.where(kt != 0, a * kt, 0.0)
    return y + a @ v1


def _reduce_to(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a gradient over the dims in which ``like`` is broadcast, and drop extra leading dims."""
    extra = grad.dim() - like.dim()
    if extra:
        grad = grad.sum(dim=tuple(range(extra)))
    dims = [d for d in range(grad.dim()) if like.shape[d] == 1 and grad.shape[d] != 1]
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def _chunks(L: int, C: int) -> list[int]:
    return list(range(0, L, C))


class _FeatureAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v1, keep, phi_q, phi_k, intra, causal, chunk):
        L, S = q.shape[-2], k.shape[-2]
        cfg = (phi_q, phi_k, intra)
        lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v1.shape[:-2],
                                      *(() if keep is None else (keep.shape[:-2],)))
        state_lead = torch.broadcast_shapes(k.shape[:-2], v1.shape[:-2],
                                            *(() if keep is None else (keep.shape[:-2],)))
        y = fresh((*lead, L, v1.shape[-1]), v1)
        # The zero state, (F, D_v + 1) per state_lead: phi_k of no keys gives the feature count.
        state = _state(phi_k, k[..., :0, :], v1[..., :0, :], None).expand(*state_lead, -1, -1)
        states = []
        # Causal: keys from L on are seen by no query (the masked-key rule): never touched, so that
        # nothing they hold (a finite key whose features overflow) reaches a result; dk, dv = 0.
        if causal:
            for i0 in _chunks(L, chunk):
                i1, j1 = min(L, i0 + chunk), min(S, i0 + chunk, L)
                kp = keep[..., i0:j1, :] if keep is not None else None
                kc, vc = k[..., i0:j1, :], v1[..., i0:j1, :]
                states.append(state)
                qc = q[..., i0:i1, :]
                y[..., i0:i1, :] = _chunk_output(phi_q(qc), qc, kc, vc, state, kp, cfg, i0, i1)
                if i0 < S:
                    state = state + _state(phi_k, kc, vc, kp)
        else:
            for j0 in _chunks(S, chunk):
                kp = keep[..., j0:j0 + chunk, :] if keep is not None else None
                state = state + _state(phi_k, k[..., j0:j0 + chunk, :], v1[..., j0:j0 + chunk, :], kp)
            for i0 in _chunks(L, chunk):
                y[..., i0:i0 + chunk, :] = phi_q(q[..., i0:i0 + chunk, :]) @ state
        if not causal or not states:  # backward needs the final (non-causal) or the zero state's shape
            states.append(state)
        ctx.save_for_backward(q, k, v1, keep, *states)
        ctx.config = (cfg, causal, chunk)
        return y

    @staticmethod
    @first_order_backward("attnlab's feature-map attention (backend 'linear', feature approximations)")
    def backward(ctx, dy):
        q, k, v1, keep, *states = ctx.saved_tensors
        cfg, causal, chunk = ctx.config
        phi_q = cfg[0]
        L, S = q.shape[-2], k.shape[-2]
        dq, dk, dv1 = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v1)
        # carry = d(loss)/d(state) summed over the query chunks after the current one.
        carry = torch.zeros_like(states[0])

        def query_grads(i0: int, i1: int, state: Tensor) -> None:
            """dq of queries i0:i1 through phi_q(q) @ state, and their share of carry."""
            nonlocal carry
            qc = q[..., i0:i1, :].detach().requires_grad_(True)
            with torch.enable_grad():
                fq = phi_q(qc)
                (dq[..., i0:i1, :],) = torch.autograd.grad(fq, qc, _reduce_to(dy[..., i0:i1, :] @ state.mT, fq))
            carry = carry + _reduce_to(fq.detach().mT @ dy[..., i0:i1, :], carry)

        if not causal:
            for i0 in _chunks(L, chunk):
                query_grads(i0, min(L, i0 + chunk), states[0])
            for j0 in _chunks(S, chunk):
                _state_backward(cfg, k, v1, keep, carry, dk, dv1, j0, min(S, j0 + chunk))
            return dq, dk, dv1, None, None, None, None, None, None
        starts = _chunks(L, chunk)
        for c in reversed(range(len(starts))):
            i0 = starts[c]
            i1, j1 = min(L, i0 + chunk), min(S, i0 + chunk, L)
            if i0 < S:
                _state_backward(cfg, k, v1, keep, carry, dk, dv1, i0, j1)
            qc, kc, vc = (t[..., i0:i1 if t is q else j1, :].detach().requires_grad_(True) for t in (q, k, v1))
            kp = keep[..., i0:j1, :] if keep is not None else None
            with torch.enable_grad():
                fq = phi_q(qc)
                y = _chunk_output(fq, qc, kc, vc, states[c], kp, cfg, i0, i1)
                grads = torch.autograd.grad(y, (qc, kc, vc), dy[..., i0:i1, :], allow_unused=True)
            dq[..., i0:i1, :] = _reduce_to(grads[0], qc)
            for acc, g in ((dk, grads[1]), (dv1, grads[2])):
                if g is not None:
                    acc[..., i0:j1, :] += _reduce_to(g, acc[..., i0:j1, :])
            carry = carry + _reduce_to(fq.detach().mT @ dy[..., i0:i1, :], carry)
        return dq, dk, dv1, None, None, None, None, None, None


def _state_backward(cfg, k, v1, keep, carry, dk, dv1, j0: int, j1: int) -> None:
    """Accumulate into dk, dv1 the gradient of keys j0:j1 through their state increment."""
    kc, vc = k[..., j0:j1, :].detach().requires_grad_(True), v1[..., j0:j1, :].detach().requires_grad_(True)
    kp = keep[..., j0:j1, :] if keep is not None else None
    with torch.enable_grad():
        u = _state(cfg[1], kc, vc, kp)
        gk, gv = torch.autograd.grad(u, (kc, vc), carry)
    dk[..., j0:j1, :] += _reduce_to(gk, dk[..., j0:j1, :])
    dv1[..., j0:j1, :] += _reduce_to(gv, dv1[..., j0:j1, :])
