"""Inference: ``M3Embedder`` (encode, compute_score), MCLS for long documents, and the exports (BGE-M3 layout,
sentence-transformers)."""
from .embedder import M3Embedder, load_tokenizer
from .export import export_bge_m3
from .st_export import export_sentence_transformers

__all__ = ["M3Embedder", "load_tokenizer", "export_bge_m3", "export_sentence_transformers"]
