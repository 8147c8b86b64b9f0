"""Heads on intermediate encoder layers (``teacher=layerwise``) and truncated models (the first k layers with
their heads): a depth-elastic retriever trained jointly with the full one.

Layer numbering: k = 1 … L is the output of the k-th transformer block (``hidden_states[k]`` of a Hugging Face
encoder; ``hidden_states[0]`` is the embeddings). Supported encoders keep their blocks in
``encoder.encoder.layer`` (XLM-R, BERT and their relatives)."""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from .m3 import M3Model, M3Reps


def encoder_blocks(model: M3Model) -> nn.ModuleList:
    blocks = getattr(getattr(model.encoder, "encoder", None), "layer", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(model.encoder).__name__}: intermediate-layer heads need an encoder whose blocks are "
                         "encoder.encoder.layer (XLM-R, BERT, …)")
    return blocks


def check_layers(model: M3Model, layers: Sequence[int]) -> list[int]:
    depth = len(encoder_blocks(model))
    layers = sorted({int(k) for k in layers})
    bad = [k for k in layers if not 1 <= k < depth]
    if not layers or bad:
        raise ValueError(f"teacher.layers={list(layers)}: expected layers between 1 and {depth - 1} (the encoder has "
                         f"{depth}; the last one is the model itself)")
    return layers


class HeadSet(nn.Module):
    """Sparse and multi-vector heads of their own for one intermediate layer (the dense head has no weights),
    initialised as copies of the model's."""

    def __init__(self, model: M3Model):
        super().__init__()
        self.sparse_head = copy.deepcopy(model.sparse_head)
        self.colbert_head = copy.deepcopy(model.colbert_head)


def heads_on(model: M3Model, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             head_set: HeadSet | None = None) -> M3Reps:
    """The model's heads (or ``head_set``'s sparse / multi-vector heads) applied to ``hidden``."""
    reps = M3Reps(input_ids=input_ids, attention_mask=attention_mask)
    heads = model.active_heads
    if "dense" in heads:
        reps.dense = model.dense_head(hidden, attention_mask)
    if "sparse" in heads:
        reps.sparse = (head_set or model).sparse_head(hidden, input_ids, attention_mask)
    if "colbert" in heads:
        reps.colbert, reps.colbert_mask = (head_set or model).colbert_head(hidden, attention_mask)
    return reps


def layer_reps(model: M3Model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int],
               head_sets: Mapping[str, HeadSet] | None = None) -> tuple[M3Reps, dict[int, M3Reps]]:
    """One encoder pass: the final representations and those of each layer in ``layers`` (its own heads from
    ``head_sets[str(k)]`` when given, else the model's). Block outputs are taken with forward hooks (the same under
    FSDP2's wrapped blocks and whatever a transformers version does with ``output_hidden_states``)."""
    blocks = encoder_blocks(model)
    states: dict[int, torch.Tensor] = {}

    def keep(k: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            states[k] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [blocks[k - 1].register_forward_hook(keep(k)) for k in layers]
    try:
        hidden = model.hidden_states(input_ids, attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    final = model.heads_from_hidden(hidden, input_ids, attention_mask)
    return final, {k: heads_on(model, states[k], input_ids, attention_mask, (head_sets or {}).get(str(k)))
                   for k in layers}


def truncated_model(model: M3Model, layers: int, head_set: HeadSet | None = None) -> M3Model:
    """A copy of ``model`` keeping its first ``layers`` blocks, with ``head_set``'s heads when given: what
    ``layer_reps`` computes for that layer, as a model of its own (export, ``M3Embedder``)."""
    out = copy.deepcopy(model)
    blocks = encoder_blocks(out)
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"layers={layers}: the encoder has {len(blocks)}")
    out.encoder.encoder.layer = nn.ModuleList(list(blocks)[:layers])
    out.encoder.config.num_hidden_layers = layers
    if head_set is not None:
        out.sparse_head = copy.deepcopy(head_set.sparse_head)
        out.colbert_head = copy.deepcopy(head_set.colbert_head)
    return out
