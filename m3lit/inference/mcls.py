"""MCLS (multiple CLS) for long documents at inference, as in the BGE-M3 paper.

A CLS token is inserted every ``interval`` (256) positions — CLS at positions 0, interval, 2·interval, … —
and the dense vector is the mean of the last hidden states of all those CLS tokens (then L2-normalised by the
caller like the plain CLS vector). Sparse weights are unaffected (CLS is a special id with weight 0); the
multi-vector head should skip the inserted CLS positions (:func:`mcls_token_mask`).

``M3Embedder.encode(..., mcls=True, mcls_interval=256)`` uses these functions: ``insert_mcls`` per text (content
ids are the tokenizer's ids without special tokens), pad, run the encoder, ``mcls_pool`` for the dense vector.
"""
from __future__ import annotations

from typing import Sequence

import torch

MCLS_INTERVAL = 256


def mcls_length(num_content_tokens: int, interval: int = MCLS_INTERVAL) -> int:
    """Length of the MCLS sequence of ``num_content_tokens`` content tokens (CLS tokens + content + EOS)."""
    if interval < 2:
        raise ValueError(f"mcls interval={interval}: must be ≥ 2")
    per_segment = interval - 1
    segments = max(1, -(-num_content_tokens // per_segment))
    return segments + num_content_tokens + 1


def insert_mcls(content_ids: Sequence[int], cls_id: int, eos_id: int, max_length: int,
                interval: int = MCLS_INTERVAL) -> list[int]:
    """``[CLS] t_1 … t_{interval-1} [CLS] t_interval … [EOS]``, cut to at most ``max_length`` ids.

    Content beyond what fits is dropped (counted as truncation by :func:`mcls_truncated`); the sequence always
    ends with EOS and never ends with a CLS that has no content after it.
    """
    if max_length < 3:
        raise ValueError(f"max_length={max_length}: MCLS needs room for CLS, one token and EOS")
    per_segment = interval - 1
    out: list[int] = []
    ids = list(content_ids)
    for start in range(0, max(len(ids), 1), per_segment):
        room = max_length - 1 - len(out)  # keep one slot for EOS
        if room < 2:
            break
        segment = ids[start:start + per_segment][: room - 1]
        if not segment and out:
            break
        out.append(cls_id)
        out.extend(segment)
    out.append(eos_id)
    return out


def mcls_truncated(num_content_tokens: int, max_length: int, interval: int = MCLS_INTERVAL) -> bool:
    """Whether :func:`insert_mcls` drops content of a text with ``num_content_tokens`` tokens."""
    return mcls_length(num_content_tokens, interval) > max_length


def mcls_pool(hidden_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              cls_id: int) -> torch.Tensor:
    """Mean of the hidden states at CLS positions: (B, L, d), (B, L), (B, L) -> (B, d) (not normalised)."""
    is_cls = (input_ids == cls_id) & attention_mask.bool()
    weights = is_cls.to(hidden_states.dtype)
    counts = weights.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.einsum("bl,bld->bd", weights, hidden_states) / counts


def mcls_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, cls_id: int) -> torch.Tensor:
    """(B, L) mask of real non-CLS tokens: the positions the multi-vector head keeps under MCLS."""
    return attention_mask.bool() & (input_ids != cls_id)
