"""m3lit: train M3-style (dense + sparse + multi-vector) embedding models with Lightning and Hydra."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["M3Embedder", "M3Model"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .inference.embedder import M3Embedder
    from .model import M3Model


def __getattr__(name: str) -> Any:
    # Lazy: ``import m3lit.assets`` (or the CLI's --help) should not pay for importing torch and transformers.
    if name == "M3Embedder":
        from .inference.embedder import M3Embedder

        return M3Embedder
    if name == "M3Model":
        from .model import M3Model

        return M3Model
    raise AttributeError(f"module 'm3lit' has no attribute {name!r}")
