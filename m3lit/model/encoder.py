"""Build or load the transformer encoder (any Hugging Face encoder through ``AutoModel``)."""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

from transformers import AutoConfig, AutoModel, PreTrainedModel

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(name: str) -> str:
    """Validate ``attn_implementation``; flash-attn needs the ``flash`` extra and a GPU."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation={name!r}: expected one of {ATTN_IMPLEMENTATIONS}")
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "model.attn_implementation=flash_attention_2 needs flash-attn: pip install 'm3lit[flash]' (CUDA only)"
        )
    return name


def _from_pretrained(path: str, **kwargs: Any) -> PreTrainedModel:
    # The pooler of BERT-like encoders is unused by the M3 heads; leaving it out avoids unused parameters
    # under DDP. Not every architecture knows the flag, hence the fallback.
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
    except TypeError:
        return AutoModel.from_pretrained(path, **kwargs)


def build_encoder(
    path: str | None = None,
    config: Mapping[str, Any] | None = None,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """Load an encoder from ``path`` (HF or BGE-M3 directory) or build a randomly initialised one from ``config``.

    ``config`` holds ``model_type`` plus the architecture's config fields (e.g. ``hidden_size``).
    """
    check_attn_implementation(attn_implementation)
    if path is not None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model.path={path!r}: no such directory (the model hub is not used)")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"model.path={path!r}: no config.json, not a Hugging Face model directory")
        return _from_pretrained(path, attn_implementation=attn_implementation)
    if config is None:
        raise ValueError("model: give either `path` (a model directory) or `encoder_config` (to build from scratch)")
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ValueError("model.encoder_config: missing `model_type` (e.g. xlm-roberta)")
    hf_config = AutoConfig.for_model(model_type, **fields)
    hf_config._attn_implementation = attn_implementation
    try:
        return AutoModel.from_config(hf_config, add_pooling_layer=False, attn_implementation=attn_implementation)
    except TypeError:
        return AutoModel.from_config(hf_config, attn_implementation=attn_implementation)
