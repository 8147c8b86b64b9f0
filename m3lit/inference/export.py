"""Export a trained model in the BGE-M3 directory layout (loadable by M3Embedder and FlagEmbedding's BGEM3FlagModel)."""
from __future__ import annotations

import os
from typing import Mapping

import torch
from transformers import PreTrainedTokenizerBase

from ..model import M3Model


def export_bge_m3(model: M3Model, tokenizer: PreTrainedTokenizerBase, directory: str,
                  state_dict: Mapping[str, torch.Tensor] | None = None) -> str:
    """Write encoder config + weights, ``colbert_linear.pt``, ``sparse_linear.pt`` and the tokenizer to ``directory``.

    ``state_dict``: a full (consolidated) state dict of ``model`` when training sharded it; else its own.
    """
    model.save_pretrained(directory, state_dict=state_dict)
    tokenizer.save_pretrained(directory)
    return os.path.abspath(directory)
