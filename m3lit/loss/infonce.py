"""Contrastive (InfoNCE) loss over a row of candidates, and helpers to move between rows and groups.

A row holds the N candidates a query is scored against: its own group (1 positive + G-1 hard negatives,
starting at column ``pos_index``) plus, with in-batch negatives, every other query's passages.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce(scores: torch.Tensor, pos_index: torch.Tensor) -> torch.Tensor:
    """L = mean_b -log softmax(scores[b])[pos_index[b]]. scores (B, N) already divided by the temperature."""
    return F.cross_entropy(scores, pos_index)


def passage_to_query_infonce(scores: torch.Tensor, pos_index: torch.Tensor) -> torch.Tensor:
    """The reverse direction: each query's positive passage against the batch's B queries,
    L = mean_j -log softmax_i(scores[i, pos_index[j]])[j]. scores (B, N) already divided by the temperature; the
    (B, B) block scores[:, pos_index] is every query against every positive (the local queries only)."""
    block = scores[:, pos_index].transpose(0, 1)
    return infonce(block, torch.arange(block.shape[0], device=scores.device))


def group_columns(pos_index: torch.Tensor, group_size: int) -> torch.Tensor:
    """Columns of each query's own group: (B, G) = pos_index[:, None] + arange(G)."""
    return pos_index[:, None] + torch.arange(group_size, device=pos_index.device)


def group_scores(scores: torch.Tensor, pos_index: torch.Tensor, group_size: int) -> torch.Tensor:
    """The (B, G) scores of each query against its own group, taken from the (B, N) row."""
    return scores.gather(1, group_columns(pos_index, group_size))


def group_to_row(values: torch.Tensor, pos_index: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """Place (B, G) per-group values into a (B, N) row of zeros at the group's columns."""
    row = values.new_zeros(values.shape[0], num_candidates)
    return row.scatter(1, group_columns(pos_index, values.shape[1]), values)
