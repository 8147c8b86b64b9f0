"""Sentence-transformers module for BGE-M3's lexical (sparse) head, loaded by ``SparseEncoder`` through the dotted
path ``m3lit.inference.st_modules.M3SparsePooling`` in ``modules.json`` (which needs ``trust_remote_code=True``)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from sentence_transformers.base.modules import Module
from sentence_transformers.util.tensor import repad_flattened_features
from torch import nn


class M3SparsePooling(Module):
    """Token states -> vocabulary-sized lexical vector, as BGE-M3's sparse head (not SPLADE: no MLM logits).

    w_i = relu(W h_i + b), W (1, d), set to 0 at padding and at ``special_token_ids``;
    e[v] = max_{i : id_i = v} w_i, 0 for ids absent from the text.
    Reads ``token_embeddings`` (B, L, d), ``input_ids`` (B, L), ``attention_mask`` (B, L); writes
    ``sentence_embedding`` (B, vocab_size). The dot product of two such vectors is
    Σ_{t in both} e_q[t] e_p[t], M3's lexical matching score.
    """

    config_keys: list[str] = ["hidden_size", "vocab_size", "special_token_ids"]

    def __init__(self, hidden_size: int, vocab_size: int, special_token_ids: Sequence[int] = ()) -> None:
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.vocab_size = int(vocab_size)
        self.special_token_ids = sorted({int(i) for i in special_token_ids})
        self.linear = nn.Linear(self.hidden_size, 1)
        self.register_buffer("special_ids", torch.tensor(self.special_token_ids, dtype=torch.long), persistent=False)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "cu_seq_lens_q" in features:  # flash-attention unpadded batch: back to (B, L, ...)
            features = repad_flattened_features(features)
        hidden, ids = features["token_embeddings"], features["input_ids"]
        weights = torch.relu(self.linear(hidden).squeeze(-1))
        keep = features["attention_mask"].bool() & ~torch.isin(ids, self.special_ids.to(ids.device))
        weights = weights * keep.to(weights.dtype)
        pooled = weights.new_zeros(ids.shape[0], self.vocab_size)
        features["sentence_embedding"] = pooled.scatter_reduce(1, ids.long(), weights, reduce="amax", include_self=True)
        return features

    def get_embedding_dimension(self) -> int:
        return self.vocab_size

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write ``config.json`` (the config keys) and ``model.safetensors`` (``linear.weight`` (1, d),
        ``linear.bias`` (1,))."""
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> M3SparsePooling:
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        module = cls(**cls.load_config(model_name_or_path, **hub))
        return cls.load_torch_weights(model_name_or_path, model=module, **hub)
