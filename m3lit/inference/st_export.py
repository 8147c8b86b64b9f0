"""Dense-only sentence-transformers export: ``Transformer -> Pooling (CLS or mean) -> Normalize``.

The folder holds the encoder's HF config + weights and tokenizer, ``modules.json``,
``sentence_bert_config.json``, ``config_sentence_transformers.json``, ``1_Pooling/config.json`` and
``2_Normalize/``; ``SentenceTransformer(folder)`` then gives the same vectors as ``M3Embedder.encode(...)["dense"]``.
"""
from __future__ import annotations

import json
import os
from typing import Any

from ..model.positions import usable_length


def write_json(directory: str, name: str, obj: Any) -> None:
    """``obj`` as indented JSON in ``directory/name`` (sub-folders created)."""
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def export_sentence_transformers(embedder: Any, directory: str, max_seq_length: int | None = None) -> str:
    """Write ``embedder`` (an ``M3Embedder``, or the path of a BGE-M3 directory) as a dense-only
    sentence-transformers model in ``directory``; returns its absolute path."""
    if isinstance(embedder, (str, os.PathLike)):
        from .embedder import M3Embedder

        embedder = M3Embedder.from_pretrained(os.fspath(embedder))
    model, tokenizer = embedder.model, embedder.tokenizer
    encoder = model.encoder
    head_config = getattr(model, "head_config", None)
    pooling = getattr(head_config, "pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling={pooling!r}: the sentence-transformers export supports cls and mean")
    if head_config is not None and not getattr(head_config, "normalize", True):
        raise ValueError("the model's dense vectors are not normalised; this export always normalises")
    os.makedirs(directory, exist_ok=True)
    encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    length = max_seq_length or usable_length(encoder.config, tokenizer)
    dim = encoder.config.hidden_size

    write_json(directory, "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    write_json(directory, "sentence_bert_config.json", {"max_seq_length": length, "do_lower_case": False})
    write_json(directory, "config_sentence_transformers.json", {"prompts": {}, "default_prompt_name": None,
                                                 "similarity_fn_name": "cosine"})
    write_json(directory, "1_Pooling/config.json", {
        "word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True,
    })
    os.makedirs(os.path.join(directory, "2_Normalize"), exist_ok=True)
    return os.path.abspath(directory)
