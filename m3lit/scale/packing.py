"""Unpadded (packed) encoding: the real tokens of a right-padded batch, with no compute spent on padding.

- ``flash_attention_2``: all texts in ONE row of T = Σ lengths tokens; attention runs per text through flash-attn's
  varlen kernel (``cu_seq_lens_q/k`` and ``max_length_q/k`` passed down to the attention function).
- ``sdpa`` / ``eager``: texts packed into rows of ``capacity`` tokens (first-fit decreasing) with a block-diagonal
  attention mask (a token attends to the tokens of its own text only); positions restart at every text.
  Linear layers (most of the compute below ~2k tokens) see only real tokens plus the rows' tail slack;
  attention costs rows × capacity² instead of B × L².
Hidden states are scattered back to the padded (B, L, d) layout (zeros at padding) so the heads are unchanged;
outputs equal the padded path's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.m3 import M3Model, M3Reps


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


def block_diagonal_mask(segments: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, C, C) mask letting each token attend to its own segment: bool for sdpa, additive float for eager."""
    same = segments[:, None, :, None] == segments[:, None, None, :]
    if kind == "sdpa":
        return same
    return torch.zeros(same.shape, dtype=dtype, device=segments.device).masked_fill(~same, torch.finfo(dtype).min)


def unpack(hidden: torch.Tensor, packed: Packed) -> torch.Tensor:
    """(R, C, d) packed hidden states -> (B, L, d) padded layout, zeros at padding (differentiable)."""
    batch, length = packed.batch_shape
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, packed.dst)
    out = hidden.new_zeros(batch * length, hidden.shape[-1]).index_copy(0, packed.src, flat)
    return out.view(batch, length, -1)


def position_offset(encoder: nn.Module) -> int:
    """First position id of a text: padding_idx + 1 for RoBERTa-style embeddings (XLM-R), else 0."""
    embeddings = getattr(encoder, "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "create_position_ids_from_input_ids"):
        return int(embeddings.padding_idx) + 1
    return 0


def packed_hidden_states(model: M3Model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         pack_length: int | None = None) -> torch.Tensor:
    """Last hidden states (B, L, d) computed on the packed real tokens only (zeros at padding)."""
    encoder = model.encoder
    kind = encoder.config._attn_implementation
    pad_id = encoder.config.pad_token_id if encoder.config.pad_token_id is not None else 0
    offset = position_offset(encoder)
    if kind == "flash_attention_2":
        packed = pack(input_ids, attention_mask, None, offset, pad_id)
        cu = packed.cu_seqlens
        hidden = encoder(input_ids=packed.input_ids, position_ids=packed.position_ids, return_dict=True,
                         cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=packed.max_length,
                         max_length_k=packed.max_length).last_hidden_state
    else:
        packed = pack(input_ids, attention_mask, pack_length or input_ids.shape[1], offset, pad_id)
        dtype = encoder.get_input_embeddings().weight.dtype
        mask = block_diagonal_mask(packed.segments, kind, dtype if dtype.is_floating_point else torch.float32)
        hidden = encoder(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids,
                         return_dict=True).last_hidden_state
    return unpack(hidden, packed)


def encode_rows(model: M3Model, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: bool = False,
                pack_length: int | None = None) -> M3Reps:
    """Representations of one (sub-)batch: the padded forward, or the packed one when ``packing``."""
    if not packing:
        return model(input_ids, attention_mask)
    hidden = packed_hidden_states(model, input_ids, attention_mask, pack_length)
    return model.heads_from_hidden(hidden, input_ids, attention_mask)
