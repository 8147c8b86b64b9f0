"""m3lit: train M3-style (dense + sparse + multi-vector) embedding models with Lightning and Hydra."""
from .embedder import M3Embedder
from .model import M3Model

__all__ = ["M3Embedder", "M3Model"]
__version__ = "0.1.0"
