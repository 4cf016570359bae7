"""Language models with any attnlab kernel: a decoder-only causal LM and an encoder masked LM,
and the ``torch.nn.MultiheadAttention`` drop-in (:mod:`attnlab.models.mha`, public as
``attnlab.nn.MultiheadAttention``)."""

from .config import ModelConfig, apply_overrides, from_dict, to_dict
from .mha import MultiheadAttention
from .objectives import masked_accuracy, masked_cross_entropy, mlm_mask
from .transformer import AttentionFn, CausalLM, KVCache, MaskedLM, SelfAttention, TransformerLM

__all__ = [
    "AttentionFn",
    "CausalLM",
    "KVCache",
    "MaskedLM",
    "ModelConfig",
    "MultiheadAttention",
    "SelfAttention",
    "TransformerLM",
    "apply_overrides",
    "build_model",
    "from_dict",
    "masked_accuracy",
    "masked_cross_entropy",
    "mlm_mask",
    "to_dict",
]


def build_model(config: ModelConfig) -> TransformerLM:
    """The model class that ``config.kind`` names (``causal`` or ``masked``), built (the model
    checks ``config``: a TypeError for anything but a ModelConfig)."""
    return (CausalLM if getattr(config, "kind", None) == "causal" else MaskedLM)(config)
