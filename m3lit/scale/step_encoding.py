"""Encode a (queries or passages) batch per ``train_step.encoding``: plain, split_batch or grad_cache, each
optionally packed (unpadded). Outside training (no grad, or eval mode) every mode encodes plainly."""
from __future__ import annotations

from functools import partial

import torch

from ..model.m3 import M3Model, M3Reps
from .grad_cache import encode_grad_cache
from .options import EncodingOptions
from .packing import encode_rows
from .split_batch import encode_split_batch


def encode_batch(model: M3Model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 options: EncodingOptions) -> M3Reps:
    encode = partial(encode_rows, model, packing=options.packing, pack_length=options.pack_length)
    if options.mode == "plain" or not (model.training and torch.is_grad_enabled()):
        return encode(input_ids, attention_mask)
    rows = options.sub_batch_rows(input_ids.shape[1])
    if options.mode == "split_batch":
        return encode_split_batch(encode, input_ids, attention_mask, rows)
    return encode_grad_cache(encode, input_ids, attention_mask, rows)
