"""attnlab: attention kernels (softmax, expressive, squared, ...) and their approximations.

``import attnlab`` imports torch and numpy only; integrations load on demand.
"""

from . import approx, backends, kernels, metrics, nn
from .functional import attention, expressive_attention
from .kernels import available_kernels, get_kernel, register_kernel

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "approx",
    "attention",
    "available_kernels",
    "backends",
    "expressive_attention",
    "get_kernel",
    "kernels",
    "metrics",
    "nn",
    "register_kernel",
]
