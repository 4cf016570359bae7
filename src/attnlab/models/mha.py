"""``MultiheadAttention``: a drop-in for ``torch.nn.MultiheadAttention`` with a ``kernel=`` knob.

Its public path is ``attnlab.nn.MultiheadAttention`` (:mod:`attnlab.nn` re-exports it); it
lives here, with the other attention modules, because no module of attnlab builds on it: the
models' :class:`~attnlab.models.transformer.SelfAttention` keeps its fused ``qkv``/``out``
parameters (the keys, and the optimizer's parameter order, of every saved checkpoint) and
applies rotary positions, a KV cache and per-head hooks between projection and kernel, which
torch's ``MultiheadAttention`` signature has no room for.

A model switches from dot-product attention to expressive attention by one argument::

    >>> import torch
    >>> from attnlab.nn import MultiheadAttention
    >>> mha = MultiheadAttention(32, 4, kernel="expressive", batch_first=True)
    >>> x = torch.randn(2, 10, 32)
    >>> out, _ = mha(x, x, x, need_weights=False, is_causal=True)
    >>> out.shape
    torch.Size([2, 10, 32])

The forward signature and mask conventions are torch's ``nn.MultiheadAttention``'s, so that it
drops in: ``key_padding_mask`` True marks padding, and a bool ``attn_mask`` True marks a
position that may NOT be attended (the opposite of ``attnlab.attention``'s mask, which follows
SDPA). Unlike torch, ``is_causal=True`` needs no ``attn_mask``.

Weights are torch's too: ``state_dict()`` has ``torch.nn.MultiheadAttention``'s keys
(``in_proj_weight``, or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when kdim or vdim
differ from embed_dim; ``in_proj_bias``; ``out_proj.weight``/``out_proj.bias``), so torch's
module loads it with ``strict=True``, and ``load_state_dict`` takes torch's state dicts (and
attnlab's older ``q_proj.weight``-style ones). The parameters themselves stay ``q_proj``,
``k_proj``, ``v_proj`` (``nn.Linear``); the saved ``in_proj_*`` are concatenated copies. Grouped-
query attention (``num_kv_heads != num_heads``) has no torch equivalent: such a module saves
attnlab's own keys, and loading torch's weights into it fails with that reason. torch's
``add_bias_kv`` (``bias_k``/``bias_v``) has no attnlab equivalent and is refused the same way.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..functional import attention
from ..kernels import Kernel, get_kernel

__all__ = ["MultiheadAttention"]


class MultiheadAttention(nn.Module):
    """Multi-head attention under any attnlab kernel, with optional grouped-query heads.

    Args:
        embed_dim: model width E (query input and output width).
        num_heads: query heads H; ``embed_dim`` must be divisible by it.
        dropout: attention dropout probability in [0, 1) on the normalized weights, applied in
            training mode only, as torch's (``dropout_p`` of :func:`attnlab.attention`; returned
            weights are the ones before dropout).
        bias: use biases in the input/output projections.
        kdim, vdim: key/value input widths for cross-attention (default ``embed_dim``).
        batch_first: inputs are (B, L, E) rather than (L, B, E).
        num_kv_heads: key/value heads for grouped-query attention (default ``num_heads``);
            must divide ``num_heads``.
        kernel: an attnlab kernel name or Kernel (``"softmax"`` is DPA).
        backend: passed to :func:`attnlab.attention` (``"auto"`` by default).
        eps: normalizer epsilon of non-exponential kernels.

    Raises:
        ValueError: sizes that do not divide, a negative width, dropout outside [0, 1), unknown kernel.
        TypeError: a dropout that is not a real number.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        num_kv_heads: int | None = None,
        kernel: str | Kernel = "softmax",
        backend: str = "auto",
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads),
                            ("num_kv_heads", num_kv_heads), ("kdim", kdim), ("vdim", vdim)):
            if value is not None:
                check_int(name, value, 1)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if isinstance(dropout, bool) or not isinstance(dropout, Real):
            raise TypeError(f"dropout must be a real number in [0, 1), got {type(dropout).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.kernel = get_kernel(kernel)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first, self.backend, self.eps = batch_first, backend, eps
        kw = {"bias": bias, "device": device, "dtype": dtype}
        kv_width = num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.k_proj = nn.Linear(kdim or embed_dim, kv_width, **kw)
        self.v_proj = nn.Linear(vdim or embed_dim, kv_width, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.register_state_dict_post_hook(_save_torch_layout)
        self.register_load_state_dict_pre_hook(_load_torch_layout)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend; returns (output, weights or None) like ``torch.nn.MultiheadAttention``.

        Args:
            query: (B, L, E) if ``batch_first`` else (L, B, E); also unbatched (L, E).
            key, value: (B, S, kdim/vdim) likewise.
            key_padding_mask: bool (B, S) or (S,), True = padding (ignored key).
            need_weights: also return weights (materializes them: reference backend).
            attn_mask: bool (L, S) or (B * H, L, S), True = NOT allowed.
            average_attn_weights: average the returned weights over heads.
            is_causal: query i attends keys j <= i.

        Returns:
            output shaped like ``query``; weights (B, L, S) or (B, H, L, S) or None.
        """
        unbatched = query.dim() == 2
        batch_dim = 0 if self.batch_first else 1
        if unbatched:
            query, key, value = (x.unsqueeze(batch_dim) for x in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError(
                f"query, key and value must be 3-D (or all 2-D unbatched), got shapes "
                f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        B, L, _ = query.shape
        S = key.shape[1]
        q = self.q_proj(query).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        mask = self._visible(key_padding_mask, attn_mask, B, L, S)
        result = attention(
            q, k, v, kernel=self.kernel, attn_mask=mask, is_causal=is_causal,
            enable_gqa=self.num_heads != self.num_kv_heads, eps=self.eps,
            backend="auto" if need_weights else self.backend, return_weights=need_weights,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out, weights = result if need_weights else (result, None)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            out = out.squeeze(batch_dim)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    def _visible(self, key_padding_mask: Tensor | None, attn_mask: Tensor | None,
                 B: int, L: int, S: int) -> Tensor | None:
        """torch's 'True = blocked' masks, turned into one attnlab 'True = visible' mask."""
        visible = None
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise TypeError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
            if key_padding_mask.shape != (B, S):
                raise ValueError(f"key_padding_mask must have shape {(B, S)}, got {tuple(key_padding_mask.shape)}")
            visible = ~key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise TypeError(f"attn_mask must be bool (True = not allowed), got {attn_mask.dtype}")
            if attn_mask.shape == (L, S):
                allowed = ~attn_mask
            elif attn_mask.shape == (B * self.num_heads, L, S):
                allowed = ~attn_mask.view(B, self.num_heads, L, S)
            else:
                raise ValueError(
                    f"attn_mask must have shape {(L, S)} or {(B * self.num_heads, L, S)}, "
                    f"got {tuple(attn_mask.shape)}"
                )
            visible = allowed if visible is None else visible & allowed
        return visible

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, kernel={self.kernel.name!r}")


# --- torch.nn.MultiheadAttention's state_dict layout ---------------------------------------
_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
#: torch's keys that attnlab's parameters correspond to (plus its add_bias_kv ones, refused).
_TORCH_KEYS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias")
_TORCH_ONLY_KEYS = ("bias_k", "bias_v")


def _gqa_reason(module: MultiheadAttention) -> str:
    return (f"num_kv_heads={module.num_kv_heads} != num_heads={module.num_heads}: grouped-query attention has no "
            "torch.nn.MultiheadAttention equivalent")


def _save_torch_layout(module: MultiheadAttention, state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: q/k/v_proj.* become torch's in_proj_weight (or q/k/v_proj_weight when
    kdim/vdim differ from embed_dim, as torch's ``_qkv_same_embed_dim``) and in_proj_bias, in
    torch's key order; a grouped-query module keeps attnlab's keys."""
    if module.num_kv_heads != module.num_heads:
        return
    weights = [state_dict.pop(f"{prefix}{name}.weight") for name in _PROJECTIONS]
    biases = [state_dict.pop(f"{prefix}{name}.bias", None) for name in _PROJECTIONS]
    rest = {key: state_dict.pop(key) for key in list(state_dict) if key.startswith(prefix + "out_proj.")}
    if module.k_proj.in_features == module.v_proj.in_features == module.embed_dim:
        state_dict[prefix + "in_proj_weight"] = torch.cat(weights)
    else:
        for name, weight in zip(_PROJECTIONS, weights, strict=True):
            state_dict[f"{prefix}{name}_weight"] = weight
    if biases[0] is not None:
        state_dict[prefix + "in_proj_bias"] = torch.cat(biases)
    state_dict.update(rest)


def _load_torch_layout(module: MultiheadAttention, state_dict, prefix: str, local_metadata, strict,
                       missing_keys, unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: torch's keys (see :func:`_save_torch_layout`) become q/k/v_proj.*;
    attnlab's own keys pass unchanged. What has no attnlab equivalent goes to ``error_msgs``, which
    ``load_state_dict`` raises (strict or not)."""
    found = [key for key in _TORCH_KEYS + _TORCH_ONLY_KEYS if prefix + key in state_dict]
    if not found:
        return
    for key in _TORCH_ONLY_KEYS:
        if prefix + key in state_dict:
            error_msgs.append(f"{prefix}{key}: torch.nn.MultiheadAttention(add_bias_kv=True) has no "
                              "attnlab.nn.MultiheadAttention equivalent")
    if module.num_kv_heads != module.num_heads:
        error_msgs.append(f"cannot load torch.nn.MultiheadAttention weights ({', '.join(prefix + k for k in found)}) "
                          f"into attnlab.nn.MultiheadAttention: {_gqa_reason(module)}")
        return
    for key, suffix in (("in_proj_weight", "weight"), ("in_proj_bias", "bias")):
        packed = state_dict.pop(prefix + key, None)
        if packed is None:
            continue
        if packed.dim() == 0 or packed.shape[0] != 3 * module.embed_dim:
            error_msgs.append(f"size mismatch for {prefix}{key}: got {tuple(packed.shape)}, expected dim 0 of "
                              f"3 * embed_dim = {3 * module.embed_dim}")
            continue
        for name, part in zip(_PROJECTIONS, packed.chunk(3), strict=True):
            state_dict[f"{prefix}{name}.{suffix}"] = part
    for name in _PROJECTIONS:
        weight = state_dict.pop(f"{prefix}{name}_weight", None)
        if weight is not None:
            state_dict[f"{prefix}{name}.weight"] = weight
