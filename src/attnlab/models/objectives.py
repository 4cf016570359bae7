"""Training objectives: masked token cross-entropy and accuracy, and BERT-style masking for the masked LM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["masked_accuracy", "masked_cross_entropy", "mlm_mask"]


def masked_cross_entropy(logits: Tensor, targets: Tensor, loss_mask: Tensor | None = None, *,
                         denominator: float | Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the positions where ``loss_mask`` is True.

    ``loss = sum_{t: mask_t} -log softmax(logits_t)[targets_t] / denominator``, where the
    denominator defaults to the number of selected positions (1 if none). Data-parallel training
    passes the global count so that per-rank losses add up to the global mean.

    Args:
        logits: (B, L, V), any float dtype (computed in float32).
        targets: LongTensor (B, L) with ids in [0, V).
        loss_mask: optional bool (B, L); None selects every position.
        denominator: optional positive normalizer.

    Raises:
        ValueError: shapes that do not match, or a mask that is not bool.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits (B, L, V) and targets (B, L) must match, got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if loss_mask is not None and (loss_mask.dtype != torch.bool or loss_mask.shape != targets.shape):
        raise ValueError(f"loss_mask must be bool {tuple(targets.shape)}, got "
                         f"{loss_mask.dtype} {tuple(loss_mask.shape)}")
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    if loss_mask is not None:
        per_token = per_token * loss_mask.flatten()
    if denominator is None:
        denominator = targets.numel() if loss_mask is None else loss_mask.sum().clamp_min(1)
    return per_token.sum() / denominator


def masked_accuracy(logits_or_predictions: Tensor, targets: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of the positions where ``mask`` is True at which the prediction equals the target:
    the one accuracy of attnlab (training evaluation, the tasks, the studies).

    Args:
        logits_or_predictions: logits (B, L, V) (argmax taken) or integer predictions (B, L).
        targets: LongTensor (B, L).
        mask: optional bool (B, L); None counts every position.

    Raises:
        ValueError: a shape or dtype that does not fit ``targets``, or a mask that selects nothing.
    """
    p = logits_or_predictions
    if p.dim() == 3 and p.is_floating_point():
        p = p.argmax(dim=-1)
    if p.shape != targets.shape or p.is_floating_point():
        raise ValueError("logits_or_predictions must be logits (B, L, V) or integer predictions (B, L) with "
                         f"(B, L) = {tuple(targets.shape)}, got {p.dtype} {tuple(logits_or_predictions.shape)}")
    if mask is None:
        mask = torch.ones_like(targets, dtype=torch.bool)
    if mask.dtype != torch.bool or mask.shape != targets.shape:
        raise ValueError(f"mask must be bool {tuple(targets.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    total = int(mask.sum())
    if total == 0:
        raise ValueError("mask must select at least one position")
    return int(((p == targets) & mask).sum()) / total


def mlm_mask(tokens: Tensor, *, mask_token_id: int, vocab_size: int, generator: torch.Generator,
             mask_prob: float = 0.15, maskable: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """BERT masking: pick each position with probability ``mask_prob``; of the picked ones 80%
    become the mask token, 10% a uniformly random token in [0, vocab_size), 10% stay.

    Args:
        tokens: LongTensor (B, L), the clean sequence.
        mask_token_id: the id written at masked positions.
        vocab_size: the random replacements are drawn from [0, vocab_size).
        generator: the only source of randomness (on the CPU; results move to tokens' device).
        mask_prob: selection probability in (0, 1].
        maskable: optional bool (B, L); False positions (e.g. padding) are never picked.

    Returns:
        (inputs, targets, loss_mask): the corrupted tokens, the clean tokens, and the picked
        positions (the loss is taken there only).

    Raises:
        TypeError: ``tokens`` not a LongTensor or ``generator`` not a torch.Generator.
        ValueError: ``mask_prob`` outside (0, 1] or a ``maskable`` of another shape.

    Example:
        >>> x = torch.arange(20).view(2, 10)
        >>> g = torch.Generator().manual_seed(0)
        >>> inp, tgt, sel = mlm_mask(x, mask_token_id=99, vocab_size=20, generator=g, mask_prob=0.5)
        >>> bool((tgt == x).all()), bool((inp[~sel] == x[~sel]).all())
        (True, True)
    """
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.long:
        raise TypeError(f"tokens must be a LongTensor, got {getattr(tokens, 'dtype', type(tokens).__name__)}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not 0 < mask_prob <= 1:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if maskable is not None and (maskable.dtype != torch.bool or maskable.shape != tokens.shape):
        raise ValueError(f"maskable must be bool {tuple(tokens.shape)}, got "
                         f"{maskable.dtype} {tuple(maskable.shape)}")
    u = torch.rand((2, *tokens.shape), generator=generator).to(tokens.device)
    rand_tok = torch.randint(0, vocab_size, tokens.shape, generator=generator).to(tokens.device)
    picked = u[0] < mask_prob
    if maskable is not None:
        picked &= maskable
    inputs = torch.where(picked & (u[1] < 0.8), mask_token_id, tokens)
    inputs = torch.where(picked & (u[1] >= 0.8) & (u[1] < 0.9), rand_tok, inputs)
    return inputs, tokens.clone(), picked
