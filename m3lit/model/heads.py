"""The three M3 retrieval heads, applied to the encoder's last hidden states H (B, L, d)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseHead(nn.Module):
    """Dense vector e = normalize(H[:, 0]) (CLS pooling) or the masked mean of H. Output (B, d)."""

    def __init__(self, pooling: str = "cls", normalize: bool = True):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.pooling={pooling!r}: expected 'cls' or 'mean'")
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            vec = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(vec, dim=-1) if self.normalize else vec


class SparseHead(nn.Module):
    """Per-token lexical weights w_i = relu(Linear(d, 1)(H_i)), zero at special ids and padding. Output (B, L).

    The per-token-id maximum is taken when scoring (``m3lit.model.scores.sparse_scores``), over the ids that
    occur in the batch, so no (B, L, vocab) tensor is ever built.
    """

    def __init__(self, hidden_size: int, special_token_ids: list[int]):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        self.register_buffer("special_token_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long),
                             persistent=False)

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = torch.relu(self.linear(hidden).squeeze(-1))
        keep = attention_mask.bool() & ~torch.isin(input_ids, self.special_token_ids)
        return weights * keep.to(weights.dtype)


class ColbertHead(nn.Module):
    """Multi-vector E = normalize(Linear(d, d_c)(H[:, 1:])), padding rows zero. Output (B, L-1, d_c) and mask."""

    def __init__(self, hidden_size: int, colbert_dim: int | None = None, normalize: bool = True):
        super().__init__()
        self.linear = nn.Linear(hidden_size, colbert_dim or hidden_size)
        self.normalize = normalize

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask[:, 1:]
        vecs = self.linear(hidden[:, 1:]) * mask.unsqueeze(-1).to(hidden.dtype)
        if self.normalize:
            vecs = F.normalize(vecs, dim=-1)
        return vecs, mask
