"""attnlab: attention kernels (softmax, expressive, squared, ...) and their approximations.

``import attnlab`` itself imports nothing heavy: its submodules and the names below load on
first use (PEP 562), so that ``attnlab --help`` stays fast. Using them imports torch and numpy
only; integrations load on demand.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# public name -> the submodule that defines it
_FROM = {"attention": "functional", "expressive_attention": "functional", "available_kernels": "kernels",
         "get_kernel": "kernels", "register_kernel": "kernels"}


def __getattr__(name: str) -> Any:
    """Import ``attnlab.<name>`` (a submodule) or the public function ``name`` on first use."""
    if name in _FROM:
        value = getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
