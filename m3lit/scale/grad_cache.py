"""GradCache: representation memory for the whole batch, activation memory for one sub-batch.

Pass 1 encodes every sub-batch keeping no activations; the loss over all representations is back-propagated to
the representations (their gradients are the cache); each sub-batch is then re-encoded with gradient, with its
dropout randomness replayed, and its cached gradient back-propagated through it.

Implementation: each sub-batch's whole forward (encoder + heads) runs inside non-reentrant activation
checkpointing. Its forward saves nothing but its inputs (pass 1); when Lightning's backward reaches a sub-batch's
representations, autograd holds their complete gradient (the cache) and the checkpoint re-runs the sub-batch's
forward with the CPU and CUDA RNG states saved before pass 1 restored (same dropout masks), then back-propagates
the cached gradient through it. Because it is one ordinary backward, gradient accumulation, clipping, mixed
precision, DDP and FSDP work unchanged, as do all heads, self-distillation and learned teacher weights
(the loss graph is built on the gathered representations like in plain training). Cost: one extra forward.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..model.m3 import M3Reps
from .split_batch import Encode, cat_reps, row_slices

_FIELDS = ("dense", "sparse", "colbert", "colbert_mask")


def _checkpointed(encode: Encode, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  preserve_rng_state: bool) -> M3Reps:
    def run(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        reps = encode(ids, mask)
        return tuple(getattr(reps, f) for f in _FIELDS)

    out = checkpoint(run, input_ids, attention_mask, use_reentrant=False, preserve_rng_state=preserve_rng_state)
    return M3Reps(input_ids, attention_mask, **dict(zip(_FIELDS, out)))


def encode_grad_cache(encode: Encode, input_ids: torch.Tensor, attention_mask: torch.Tensor, sub_batch_rows: int,
                      preserve_rng_state: bool = True) -> M3Reps:
    """Representations of all rows; each sub-batch of ``sub_batch_rows`` rows is re-encoded during backward.

    ``preserve_rng_state=False`` (never in training) only exists to show that replaying dropout matters."""
    parts = [_checkpointed(encode, input_ids[s], attention_mask[s], preserve_rng_state)
             for s in row_slices(input_ids.shape[0], sub_batch_rows)]
    return cat_reps(parts)
