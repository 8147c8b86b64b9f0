"""Scoring against cross-device candidates: each rank's queries against the passages of all ranks, per head.

A head with ``cross_device`` on scores the gathered candidates (with gradient, ``m3lit.scale.gather``); a head
left local scores its own rank's passages and gives the other ranks' columns ``MASKED_SCORE``, so every head's
row has the same columns and the positive sits at the same index.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..loss.infonce import group_scores
from ..model.m3 import M3Reps
from ..model.scores import score_matrix
from .gather import gather_candidates, world

# Raw score given to candidates a head does not see (other ranks' passages when only some heads gather them):
# after the temperature its softmax weight is exactly 0, and 0 × it stays finite in weighted ensembles.
MASKED_SCORE = -1.0e4


def score_candidates(q: M3Reps, p: M3Reps, heads: tuple[str, ...], cross_device: Mapping[str, bool],
                     no_in_batch_neg: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Scores per head (B, N) in float32, the positive's column per query (B,), and the group size G.

    Queries q (B rows), passages p (B·G rows, each query's group positive first). Candidates: the query's group
    only (``no_in_batch_neg``), this rank's passages, or, for the heads with ``cross_device[h]`` on (and more than
    one rank), the passages of all ranks in rank order, so the positive of local query i sits at column
    offset + i·G. Scores are computed in float32 outside autocast.
    """
    batch_size = q.input_ids.shape[0]
    group_size = p.input_ids.shape[0] // batch_size
    with torch.autocast(q.input_ids.device.type, enabled=False):
        q, p = _float_reps(q), _float_reps(p)
        pos_index = torch.arange(batch_size, device=q.input_ids.device) * group_size
        if no_in_batch_neg:
            scores = {h: group_scores(score_matrix(h, q, p), pos_index, group_size) for h in heads}
            return scores, torch.zeros_like(pos_index), group_size
        gathered = tuple(h for h in heads if cross_device[h]) if world()[1] > 1 else ()
        if not gathered:
            return {h: score_matrix(h, q, p) for h in heads}, pos_index, group_size
        candidates = gather_candidates(p, gathered)
        scores = {}
        for h in heads:
            if h in gathered:
                scores[h] = score_matrix(h, q, candidates.reps)
            else:
                local = score_matrix(h, q, p)
                row = local.new_full((batch_size, candidates.total), MASKED_SCORE)
                columns = torch.arange(candidates.offset, candidates.offset + local.shape[1], device=local.device)
                scores[h] = row.index_copy(1, columns, local)
        return scores, pos_index + candidates.offset, group_size


def _float_reps(r: M3Reps) -> M3Reps:
    """Representations in float32 (scores are computed in float32 whatever the training precision)."""

    def f(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.float() if t is not None else None  # no copy when already float32

    return M3Reps(input_ids=r.input_ids, attention_mask=r.attention_mask, dense=f(r.dense), sparse=f(r.sparse),
                  colbert=f(r.colbert), colbert_mask=r.colbert_mask)
