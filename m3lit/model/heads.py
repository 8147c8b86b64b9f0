"""The three M3 retrieval heads, applied to the encoder's last hidden states.

Each head takes either the padded states H (B, L, d) or, with ``positions``, the real tokens only: a (N, d) matrix
whose row r is the state at flat padded position ``positions[r] = b·L + i`` (a packed batch, where no compute goes
to padding). Outputs are in the padded layout either way, with the same values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _texts_and_offsets(positions: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(text b, offset i) of each flat padded position b·L + i."""
    length = attention_mask.shape[1]
    return torch.div(positions, length, rounding_mode="floor"), positions % length


def scatter_rows(rows: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """(size, ...) zeros with ``rows[r]`` at ``index[r]`` (differentiable in ``rows``)."""
    return rows.new_zeros((size, *rows.shape[1:])).index_copy(0, index, rows)


class DenseHead(nn.Module):
    """Dense vector e = normalize(H[:, 0]) (CLS pooling) or the masked mean of H. Output (B, d)."""

    def __init__(self, pooling: str = "cls", normalize: bool = True):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.pooling={pooling!r}: expected 'cls' or 'mean'")
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is not None:
            vec = self._pool_tokens(hidden, attention_mask, positions)
        elif self.pooling == "cls":
            vec = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(vec, dim=-1) if self.normalize else vec

    def _pool_tokens(self, tokens: torch.Tensor, attention_mask: torch.Tensor,
                     positions: torch.Tensor) -> torch.Tensor:
        texts, offsets = _texts_and_offsets(positions, attention_mask)
        batch = attention_mask.shape[0]
        if self.pooling == "cls":  # a text without tokens pools to zeros, as its padded CLS row would
            first = (offsets == 0).nonzero().squeeze(1)
            return scatter_rows(tokens.index_select(0, first), texts.index_select(0, first), batch)
        sums = tokens.new_zeros(batch, tokens.shape[-1]).index_add(0, texts, tokens)
        counts = torch.bincount(texts, minlength=batch).clamp_min(1).to(tokens.dtype)
        return sums / counts[:, None]


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

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        weights = torch.relu(self.linear(hidden).squeeze(-1))
        if positions is not None:  # real tokens (N,): zero at special ids, scattered to (B, L)
            ids = input_ids.reshape(-1).index_select(0, positions)
            weights = weights * (~torch.isin(ids, self.special_token_ids)).to(weights.dtype)
            return scatter_rows(weights, positions, input_ids.numel()).view(input_ids.shape)
        keep = attention_mask.bool() & ~torch.isin(input_ids, self.special_token_ids)
        return weights * keep.to(weights.dtype)


class ColbertHead(nn.Module):
    """Multi-vector E = normalize(Linear(d, d_c)(H[:, 1:])), padding rows zero. Output (B, L-1, d_c) and mask."""

    def __init__(self, hidden_size: int, colbert_dim: int | None = None, normalize: bool = True):
        super().__init__()
        self.linear = nn.Linear(hidden_size, colbert_dim or hidden_size)
        self.normalize = normalize

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask[:, 1:]
        if positions is not None:  # real tokens after each text's first: projected, then scattered to (B, L-1)
            texts, offsets = _texts_and_offsets(positions, attention_mask)
            rest = (offsets > 0).nonzero().squeeze(1)
            vecs = self.linear(hidden.index_select(0, rest))
            if self.normalize:
                vecs = F.normalize(vecs, dim=-1)
            batch, length = attention_mask.shape
            target = texts.index_select(0, rest) * (length - 1) + offsets.index_select(0, rest) - 1
            return scatter_rows(vecs, target, batch * (length - 1)).view(batch, length - 1, -1), mask
        vecs = self.linear(hidden[:, 1:]) * mask.unsqueeze(-1).to(hidden.dtype)
        if self.normalize:
            vecs = F.normalize(vecs, dim=-1)
        return vecs, mask
