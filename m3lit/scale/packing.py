"""Unpadded (packed) encoding: the real tokens of a right-padded batch, with no compute spent on padding.

- One row of all texts (T = Σ lengths tokens), attention text by text: flash-attn's varlen kernel on
  ``flash_attention_2``; on ``sdpa`` for XLM-R / RoBERTa / BERT encoders, ``varlen_attention`` (SDPA per group of
  similar lengths: about Σ lᵢ² attention cost, no mask tensor). The text boundaries (``cu_seq_lens_q/k``,
  ``max_length_q/k``) are passed down to the attention function.
- Otherwise (``eager``, other encoders, or ``pack_length=C``): texts packed into rows of C tokens (default: the
  batch's padded length; first-fit decreasing) with a block-diagonal attention mask (a token attends to the
  tokens of its own text only); attention then costs rows × C² and an (R, 1, C, C) mask.
Positions restart at every text. The heads run on the real tokens too (``M3Model.heads_from_hidden`` with their
padded positions) and return the padded layout; outputs equal the padded path's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.heads import scatter_rows
from ..model.m3 import M3Model, M3Reps
from .varlen_attention import varlen_calls


@dataclass
class Packed:
    """A right-padded (B, L) batch packed into (R, C) rows.

    ``input_ids``/``position_ids``/``segments`` (R, C): segment = index of the text within the batch (-1 - row for a
    row's tail padding); ``src`` / ``dst``: flat indices of every real token in the padded (B·L) and packed (R·C)
    layouts; ``cu_seqlens`` (B+1,) int32 and ``max_length``: text boundaries in the single-row layout.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    cu_seqlens: torch.Tensor
    max_length: int
    batch_shape: tuple[int, int]


def text_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) of a right-padded mask; raises if any row has a hole or leading padding."""
    lengths = attention_mask.sum(1)
    prefix = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None] < lengths[:, None]
    if not torch.equal(prefix, attention_mask.bool()):
        raise ValueError("packed encoding needs right-padded batches (attention_mask = 1…1 0…0 on every row)")
    return lengths


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of text indices whose lengths sum to at most ``capacity`` (longest texts placed first)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int | None, position_offset: int = 0,
         pad_id: int = 0) -> Packed:
    """Pack the real tokens into rows of ``capacity`` tokens (None: one row holding everything).

    Position of token i of a text: ``position_offset + i`` (XLM-R/RoBERTa: padding_idx + 1; BERT: 0)."""
    batch, length = input_ids.shape
    lengths = text_lengths(attention_mask)
    sizes = lengths.tolist()
    total = int(sum(sizes))
    if capacity is None:
        bins, capacity = [list(range(batch))], total
    else:
        capacity = max(int(capacity), max(sizes, default=1))
        bins = first_fit_decreasing(sizes, capacity)
    device = input_ids.device
    rows = len(bins)
    segments = torch.empty(rows, capacity, dtype=torch.long)
    positions = torch.full((rows, capacity), position_offset, dtype=torch.long)
    src, dst = [], []
    for r, members in enumerate(bins):
        segments[r] = -1 - r
        start = 0
        for i in members:
            n = sizes[i]
            segments[r, start:start + n] = i
            positions[r, start:start + n] = torch.arange(position_offset, position_offset + n)
            src.append(torch.arange(i * length, i * length + n))
            dst.append(torch.arange(r * capacity + start, r * capacity + start + n))
            start += n
    src_t = torch.cat(src).to(device) if src else torch.zeros(0, dtype=torch.long, device=device)
    dst_t = torch.cat(dst).to(device) if dst else torch.zeros(0, dtype=torch.long, device=device)
    packed_ids = torch.full((rows * capacity,), pad_id, dtype=input_ids.dtype, device=device)
    packed_ids[dst_t] = input_ids.reshape(-1)[src_t]
    order = [i for members in bins for i in members]
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor([sizes[i] for i in order], dtype=torch.int32), 0)
    return Packed(input_ids=packed_ids.view(rows, capacity), position_ids=positions.to(device),
                  segments=segments.to(device), src=src_t, dst=dst_t, cu_seqlens=cu.to(device),
                  max_length=max(sizes, default=0), batch_shape=(batch, length))


def computed_tokens(attention_mask: torch.Tensor, packing: bool, pack_length: int | None = None,
                    one_row: bool = True) -> int:
    """Token positions the encoder's linear layers compute for this (B, L) batch: B·L padded; the real tokens
    when packed into one row; rows × capacity otherwise (capacity ``pack_length``, default the padded length)."""
    if not packing:
        return int(attention_mask.numel())
    sizes = attention_mask.sum(1).tolist()
    if one_row:
        return int(sum(sizes))
    capacity = max(int(pack_length or attention_mask.shape[1]), max(sizes, default=1))
    return len(first_fit_decreasing(sizes, capacity)) * capacity


def block_diagonal_mask(segments: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, C, C) mask letting each token attend to its own segment: bool for sdpa, additive float for eager."""
    same = segments[:, None, :, None] == segments[:, None, None, :]
    if kind == "sdpa":
        return same
    return torch.zeros(same.shape, dtype=dtype, device=segments.device).masked_fill(~same, torch.finfo(dtype).min)


def position_offset(encoder: nn.Module) -> int:
    """First position id of a text: padding_idx + 1 for RoBERTa-style embeddings (XLM-R), else 0."""
    embeddings = getattr(encoder, "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "create_position_ids_from_input_ids"):
        return int(embeddings.padding_idx) + 1
    return 0


# encoders whose attention layers all go through transformers' attention interface (the one-row sdpa path)
ONE_ROW_SDPA_MODELS = ("xlm-roberta", "roberta", "bert")


def one_row(encoder: nn.Module, pack_length: int | None) -> bool:
    """Whether ``packed_hidden_states`` packs into one row (flash-attn varlen, or SDPA text by text)."""
    config = encoder.config
    kind = config._attn_implementation
    return kind == "flash_attention_2" or (pack_length is None and kind == "sdpa"
                                           and config.model_type in ONE_ROW_SDPA_MODELS)


def packed_token_states(model: M3Model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        pack_length: int | None = None) -> tuple[torch.Tensor, Packed]:
    """Last hidden states of the real tokens only, (N, d) in packing order, and the layout (``Packed.src``: each
    row's flat padded position): one row with attention text by text (flash-attn; SDPA for XLM-R / RoBERTa / BERT
    unless ``pack_length``), else rows of ``pack_length`` (default: the batch's padded length) tokens with a
    block-diagonal mask."""
    encoder = model.encoder
    kind = encoder.config._attn_implementation
    pad_id = encoder.config.pad_token_id if encoder.config.pad_token_id is not None else 0
    offset = position_offset(encoder)
    if one_row(encoder, pack_length):
        packed = pack(input_ids, attention_mask, None, offset, pad_id)
        cu = packed.cu_seqlens
        before = varlen_calls()
        # SDPA: an all-ones mask keeps transformers (>= 5.25) from building a (T, T) block-diagonal mask out of the
        # restarting position ids; it is dropped as "no mask", and cu_seq_lens route each layer to the packed path
        ones = torch.ones_like(packed.input_ids) if kind == "sdpa" else None
        hidden = encoder(input_ids=packed.input_ids, position_ids=packed.position_ids, return_dict=True,
                         attention_mask=ones,
                         cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=packed.max_length,
                         max_length_k=packed.max_length).last_hidden_state
        layers = getattr(encoder.config, "num_hidden_layers", 0)
        if kind == "sdpa" and varlen_calls() - before < layers:
            raise RuntimeError(f"packed encoding: only {varlen_calls() - before} of {layers} attention layers of "
                               f"this {encoder.config.model_type} encoder took the packed path; set "
                               "train_step.encoding.packing=false (or a pack_length)")
        return hidden.squeeze(0), packed  # one row of real tokens only (dst is 0 … N-1); squeeze's backward is a view
    packed = pack(input_ids, attention_mask, pack_length or input_ids.shape[1], offset, pad_id)
    dtype = encoder.get_input_embeddings().weight.dtype
    mask = block_diagonal_mask(packed.segments, kind, dtype if dtype.is_floating_point else torch.float32)
    hidden = encoder(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids,
                     return_dict=True).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, packed.dst), packed


def packed_hidden_states(model: M3Model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         pack_length: int | None = None) -> torch.Tensor:
    """Last hidden states (B, L, d) computed on the packed real tokens only (zeros at padding)."""
    tokens, packed = packed_token_states(model, input_ids, attention_mask, pack_length)
    batch, length = packed.batch_shape
    return scatter_rows(tokens, packed.src, batch * length).view(batch, length, -1)


def encode_rows(model: M3Model, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: bool = False,
                pack_length: int | None = None, heads: tuple[str, ...] | None = None) -> M3Reps:
    """Representations of one (sub-)batch (``heads``: None = the model's): the padded forward, or the packed one
    when ``packing``."""
    if not packing:
        return model(input_ids, attention_mask, heads=heads)
    tokens, packed = packed_token_states(model, input_ids, attention_mask, pack_length)
    return model.heads_from_hidden(tokens, input_ids, attention_mask, heads, positions=packed.src)
