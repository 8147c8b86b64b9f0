"""Build an M3Model from the ``model`` config group."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from .encoder import build_encoder
from .m3 import HEADS, HeadConfig, M3Model, special_token_ids

SPARSE_INITS = ("default", "uniform", "idf")
COLBERT_INITS = ("default", "identity")


def build_m3_model(
    tokenizer: PreTrainedTokenizerBase,
    path: str | None = None,
    encoder_config: Mapping[str, Any] | None = None,
    attn_implementation: str = "sdpa",
    heads: Mapping[str, bool] | None = None,
    pooling: str = "cls",
    normalize: bool = True,
    colbert_dim: int | None = None,
    gradient_checkpointing: bool = False,
    sparse_init: str = "default",
    sparse_init_bias: float = 0.1,
    sparse_init_texts: Sequence[str] | None = None,
    colbert_init: str = "default",
    tokenizer_path: str | None = None,
) -> M3Model:
    """A model from ``path`` (HF encoder or BGE-M3 directory; BGE-M3 head weights are loaded when present) or,
    without a path, a randomly initialised encoder built from ``encoder_config`` with the tokenizer's vocabulary.
    ``sparse_init``: ``default`` (nn.Linear's) or ``uniform`` (weight 0, bias ``sparse_init_bias``: every token starts
    with the same weight, i.e. plain lexical overlap — keeps the head of an encoder trained from scratch alive) or
    ``idf`` (fitted to an IDF weighting of ``sparse_init_texts``, mean weight ``sparse_init_bias``:
    :mod:`m3lit.model.sparse_init`); it applies to a freshly created sparse head, not to one loaded from a BGE-M3
    directory.
    ``colbert_init``: ``default`` (nn.Linear's: a random projection of the token states) or ``identity`` (W = I,
    b = 0: the multi-vector head starts as MaxSim over the encoder's own normalised token states; needs
    ``colbert_dim`` = hidden size); like ``sparse_init``, only for a fresh head.
    ``tokenizer_path`` is accepted (and ignored) so the whole ``model`` config group can be passed in."""
    if sparse_init not in SPARSE_INITS:
        raise ValueError(f"model.sparse_init={sparse_init!r}: expected one of {SPARSE_INITS}")
    if colbert_init not in COLBERT_INITS:
        raise ValueError(f"model.colbert_init={colbert_init!r}: expected one of {COLBERT_INITS}")
    head_config = HeadConfig(heads={h: bool((heads or {}).get(h, True)) for h in HEADS} if heads is not None
                             else {h: True for h in HEADS},
                             pooling=pooling, normalize=normalize, colbert_dim=colbert_dim)
    unknown = set(heads or {}) - set(HEADS)
    if unknown:
        raise ValueError(f"model.heads: unknown head(s) {sorted(unknown)}; expected {HEADS}")
    special = special_token_ids(tokenizer)
    loaded: list[str] = []
    if path is not None:
        model = M3Model.from_pretrained(path, special, attn_implementation=attn_implementation,
                                        head_config=head_config)
        loaded = model.loaded_head_files
    else:
        config = dict(encoder_config or {})
        config.setdefault("vocab_size", len(tokenizer))
        config.setdefault("pad_token_id", tokenizer.pad_token_id)
        if tokenizer.bos_token_id is not None:
            config.setdefault("bos_token_id", tokenizer.bos_token_id)
        if tokenizer.eos_token_id is not None:
            config.setdefault("eos_token_id", tokenizer.eos_token_id)
        if config["vocab_size"] < len(tokenizer):
            raise ValueError(f"model.encoder_config.vocab_size={config['vocab_size']} is smaller than the "
                             f"tokenizer's vocabulary ({len(tokenizer)})")
        model = M3Model(build_encoder(config=config, attn_implementation=attn_implementation), special, head_config)
    if model.encoder.config.vocab_size < len(tokenizer):
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the encoder's vocabulary is "
                         f"{model.encoder.config.vocab_size}: tokenizer and model do not belong together")
    if sparse_init == "uniform" and "sparse_linear.pt" not in loaded:
        with torch.no_grad():
            model.sparse_head.linear.weight.zero_()
            model.sparse_head.linear.bias.fill_(sparse_init_bias)
    if sparse_init == "idf" and "sparse_linear.pt" not in loaded and model.head_config.heads["sparse"]:
        from .sparse_init import fit_sparse_head_to_idf

        fit_sparse_head_to_idf(model, tokenizer, list(sparse_init_texts or []), mean_weight=sparse_init_bias)
    if colbert_init == "identity" and "colbert_linear.pt" not in loaded and model.head_config.heads["colbert"]:
        linear = model.colbert_head.linear
        if linear.in_features != linear.out_features:
            raise ValueError(f"model.colbert_init=identity needs model.colbert_dim = the hidden size "
                             f"({linear.in_features}), got {linear.out_features}")
        with torch.no_grad():
            linear.weight.copy_(torch.eye(linear.in_features))
            linear.bias.zero_()
    if gradient_checkpointing:
        model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
