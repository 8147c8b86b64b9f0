"""Encoder, heads, scores and the M3 model."""
from .build import build_m3_model
from .encoder import build_encoder
from .heads import ColbertHead, DenseHead, SparseHead
from .m3 import HEADS, HeadConfig, M3Model, M3Reps, special_token_ids
from .scores import colbert_scores, dense_scores, score_matrix, sparse_scores

__all__ = ["build_m3_model", "build_encoder", "ColbertHead", "DenseHead", "SparseHead", "HEADS", "HeadConfig", "M3Model", "M3Reps",
           "special_token_ids", "colbert_scores", "dense_scores", "score_matrix", "sparse_scores"]
