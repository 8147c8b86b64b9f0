"""Training at scale: cross-device candidates with gradient, split-batch and GradCache encoding, packed
(unpadded) sequences, memory-lean ColBERT scoring, FSDP2, non-finite loss handling. See docs/scaling.md."""
from .cross_device import MASKED_SCORE, score_candidates
from .fsdp import FSDP2Strategy, shard_m3_model
from .gather import Candidates, gather_candidates
from .grad_cache import encode_grad_cache
from .nonfinite import NonFiniteLossError
from .options import EncodingOptions, TrainStepOptions
from .packing import encode_rows, pack, packed_hidden_states
from .split_batch import encode_split_batch
from .step_encoding import encode_batch

__all__ = ["encode_batch", "MASKED_SCORE", "score_candidates", "FSDP2Strategy", "shard_m3_model", "Candidates", "gather_candidates", "encode_grad_cache",
           "NonFiniteLossError", "EncodingOptions", "TrainStepOptions", "encode_rows", "pack",
           "packed_hidden_states", "encode_split_batch"]
