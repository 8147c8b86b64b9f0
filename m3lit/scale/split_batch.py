"""Split-batch encoding (the M3 paper's Algorithm 1): sub-batches encoded one after the other with per-layer
activation checkpointing, representations concatenated.

Stored for backward: every layer's input for every row (n_layers × B × L × d) plus the representations; the
within-layer activations (attention, FFN) exist for one sub-batch at a time, during forward and recompute.
Sub-batch rows come from the padded length (``EncodingOptions.sub_batch_rows``: a table or a token budget).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..model.m3 import M3Model, M3Reps

Encode = Callable[[torch.Tensor, torch.Tensor], M3Reps]


def row_slices(rows: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, rows)) for start in range(0, rows, max(1, size))]


def cat_reps(parts: list[M3Reps]) -> M3Reps:
    """Concatenate the representations of consecutive sub-batches (same padded length) along rows."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return M3Reps(input_ids=cat("input_ids"), attention_mask=cat("attention_mask"), dense=cat("dense"),
                  sparse=cat("sparse"), colbert=cat("colbert"), colbert_mask=cat("colbert_mask"))


def enable_layer_checkpointing(model: M3Model) -> None:
    """Per-layer (non-reentrant) activation checkpointing of the encoder; dropout is replayed on recompute."""
    encoder = model.encoder
    kwargs = {"use_reentrant": False}
    if hasattr(encoder, "activation_checkpointing_enable"):  # transformers >= 5.x name
        if not encoder.is_activation_checkpointing:
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif not encoder.is_gradient_checkpointing:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def encode_split_batch(encode: Encode, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       sub_batch_rows: int) -> M3Reps:
    """``encode`` each sub-batch of ``sub_batch_rows`` rows (the encoder checkpoints its layers) and concatenate."""
    return cat_reps([encode(input_ids[s], attention_mask[s]) for s in row_slices(input_ids.shape[0], sub_batch_rows)])
