"""The heads' names and default weights: the one source every component (model, loss, teacher, evaluation) reads.

- ``HEADS``: dense (CLS vector), sparse (lexical weights), colbert (multi-vector).
- ``ENSEMBLE_WEIGHTS`` w: the ensemble score s_e = Σ_h w_h s_h of the self-knowledge teacher, and the hybrid
  retrieval score (BGE-M3: dense 1, sparse 0.3, colbert 1).
- ``LOSS_WEIGHTS`` λ: each head's weight in the hard-label and distillation losses (BGE-M3: 1, 0.1, 1).
"""
from __future__ import annotations

HEADS: tuple[str, ...] = ("dense", "sparse", "colbert")
ENSEMBLE_WEIGHTS: dict[str, float] = {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}
LOSS_WEIGHTS: dict[str, float] = {"dense": 1.0, "sparse": 0.1, "colbert": 1.0}
