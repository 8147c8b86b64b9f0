"""Relevance scores of every query against every candidate passage, one function per head.

All functions return a (Bq, Bp) matrix, before temperature scaling.
"""
from __future__ import annotations

import torch

from .maxsim import maxsim_scores


def dense_scores(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """s_d = e_q · e_p for q (Bq, d), p (Bp, d)."""
    return q @ p.transpose(0, 1)


def lexical_vectors(ids: list[torch.Tensor], weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-text max weight of each token id, over the ids occurring in the given batches only.

    ``ids[k]``, ``weights[k]``: (B_k, L_k). Returns (B_k, U) tensors over the U distinct ids of all inputs:
    v[b, u] = max_i { w[b, i] : ids[b, i] = id_u } (0 when absent). Equal in value and gradient to building
    the (B, L, vocab) tensor and taking the max over L, without its memory.
    """
    flat = torch.cat([i.reshape(-1) for i in ids])
    _, inverse = torch.unique(flat, return_inverse=True)
    n_unique = int(inverse.max()) + 1 if inverse.numel() else 0
    out, start = [], 0
    for i, w in zip(ids, weights):
        index = inverse[start:start + i.numel()].view_as(i)
        start += i.numel()
        out.append(_max_per_column(index, w, n_unique))
    return out


def _max_per_column(index: torch.Tensor, weights: torch.Tensor, columns: int) -> torch.Tensor:
    """(B, columns) with v[b, c] = max(0, max_i { w[b, i] : index[b, i] = c })."""
    zeros = weights.new_zeros(index.shape[0], columns)
    return zeros.scatter_reduce(1, index, weights, reduce="amax", include_self=True)


def sparse_scores(q_ids: torch.Tensor, q_weights: torch.Tensor, p_ids: torch.Tensor,
                  p_weights: torch.Tensor) -> torch.Tensor:
    """s_s = Σ_{t ∈ q ∩ p} w_q(t) w_p(t), with w(t) the max weight of token t in the text. (Bq, Lq), (Bp, Lp).

    Only ids that occur in some query can score, so the lexical vectors run over the U_q distinct query ids:
    passage tokens of other ids go to one discarded column. Memory is (Bq + Bp) × U_q whatever the passage
    lengths (8192-token passages hold thousands of distinct ids); values and gradients equal the full vectors'.
    """
    q_unique, q_index = torch.unique(q_ids.reshape(-1), return_inverse=True)
    n = q_unique.numel()
    if n == 0 or p_ids.numel() == 0:
        return q_weights.new_zeros(q_ids.shape[0], p_ids.shape[0]) + 0 * (q_weights.sum() + p_weights.sum())
    flat = p_ids.reshape(-1)
    where = torch.searchsorted(q_unique, flat).clamp_max(n - 1)
    p_index = torch.where(q_unique[where] == flat, where, n).view_as(p_ids)
    q_vec = _max_per_column(q_index.view_as(q_ids), q_weights, n)
    p_vec = _max_per_column(p_index, p_weights, n + 1)[:, :n]
    return q_vec @ p_vec.transpose(0, 1)


def colbert_scores(q: torch.Tensor, q_mask: torch.Tensor, p: torch.Tensor, p_mask: torch.Tensor,
                   max_elements: int = 2**26) -> torch.Tensor:
    """s_c = (Σ_i max_j q_i · p_j) / |q|, over non-pad tokens (CLS excluded). q (Bq, Lq, d), p (Bp, Lp, d).

    Computed in chunks of passages so that the (Bq, Lq, chunk, Lp) similarity tensor stays below ``max_elements``.
    """
    q_len = q_mask.sum(-1).clamp_min(1).to(q.dtype)
    chunk = max(1, max_elements // max(1, q.shape[0] * q.shape[1] * p.shape[1]))
    parts = []
    for start in range(0, p.shape[0], chunk):
        pc, mc = p[start:start + chunk], p_mask[start:start + chunk].bool()
        sim = torch.einsum("qid,pjd->qipj", q, pc)
        sim = sim.masked_fill(~mc[None, None], torch.finfo(sim.dtype).min)
        best = sim.max(-1).values * q_mask[:, :, None].to(sim.dtype)
        parts.append(best.sum(1))
    return torch.cat(parts, dim=1) / q_len[:, None]


def score_matrix(head: str, q, p) -> torch.Tensor:
    """Scores of ``head`` between two ``M3Reps`` (queries, passages)."""
    if head == "dense":
        return dense_scores(q.dense, p.dense)
    if head == "sparse":
        return sparse_scores(q.input_ids, q.sparse, p.input_ids, p.sparse)
    if head == "colbert":
        # Same values and gradients as ``colbert_scores``; the backward recomputes instead of storing per-pair state.
        return maxsim_scores(q.colbert, q.colbert_mask, p.colbert, p.colbert_mask)
    raise ValueError(f"unknown head {head!r}")
