"""How long an input the encoder's absolute position embeddings allow."""
from __future__ import annotations

from typing import Any

# XLM-R-like models offset positions by padding_idx + 1, so they fit max_position_embeddings - 2 tokens.
_POSITION_OFFSET_TYPES = ("xlm-roberta", "roberta", "camembert")


def position_limit(encoder_config: Any) -> int | None:
    """Longest input the encoder's absolute position embeddings allow (None if the config does not say)."""
    positions = getattr(encoder_config, "max_position_embeddings", None)
    if positions is None:
        return None
    if getattr(encoder_config, "model_type", "") in _POSITION_OFFSET_TYPES:
        positions -= (getattr(encoder_config, "pad_token_id", 1) or 1) + 1
    return int(positions)


def usable_length(encoder_config: Any, tokenizer: Any, limit: int = 8192) -> int:
    """Longest input the encoder's position embeddings and the tokenizer allow (at most ``limit``)."""
    positions = position_limit(encoder_config) or limit
    return int(min(limit, positions, getattr(tokenizer, "model_max_length", limit) or limit))
