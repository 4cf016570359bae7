"""``attnlab.nn``: torch-shaped modules, the public path of the drop-in
:class:`~attnlab.models.mha.MultiheadAttention` (``attnlab.nn.MultiheadAttention``)."""

from .models.mha import MultiheadAttention

__all__ = ["MultiheadAttention"]
