"""Export a trained model in the BGE-M3 directory layout (loadable by M3Embedder and FlagEmbedding's BGEM3FlagModel)."""
from __future__ import annotations

import os
from typing import Mapping

import torch
from transformers import PreTrainedTokenizerBase

from ..files import remove_path, replace_path
from ..model import M3Model
from ..model.defaults import HEADS
from .model_folder import INCOMPLETE, write_export_marker


def flagembedding_note(model: M3Model) -> str | None:
    """How FlagEmbedding's ``BGEM3FlagModel`` must load this export, when its defaults do not fit (None if they do).

    BGEM3FlagModel builds its ColBERT projection with the hidden size unless told ``colbert_dim``; the heads that
    were never trained are only recorded in ``m3_config.json`` (FlagEmbedding still loads their files)."""
    notes = []
    colbert_dim = model.colbert_head.linear.out_features
    if colbert_dim != model.hidden_size:
        notes.append(f"colbert_dim={colbert_dim} differs from the hidden size {model.hidden_size}: load with "
                     f"FlagEmbedding's BGEM3FlagModel(path, colbert_dim={colbert_dim})")
    untrained = [h for h in HEADS if h not in model.active_heads]
    if untrained:
        notes.append(f"head(s) {', '.join(untrained)} were not trained (m3_config.json); do not use their outputs "
                     "in other libraries")
    return "; ".join(notes) or None


def export_bge_m3(model: M3Model, tokenizer: PreTrainedTokenizerBase, directory: str,
                  state_dict: Mapping[str, torch.Tensor] | None = None) -> str:
    """Write encoder config + weights, ``colbert_linear.pt``, ``sparse_linear.pt``, the tokenizer and the marker
    ``m3lit_export.json`` to ``directory``, atomically: all into ``<directory>.incomplete-<pid>``, then renamed (a
    previous export there is replaced only once the new one is complete).

    ``state_dict``: a full (consolidated) state dict of ``model`` when training sharded it; else its own.
    """
    final = os.path.abspath(directory)
    tmp = f"{final}{INCOMPLETE}{os.getpid()}"
    remove_path(tmp)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    write_export_marker(tmp)
    replace_path(tmp, final)
    return final
