"""Hybrid retrieval (the BGE-M3 paper's protocol): take the union of each mode's top candidates and re-rank it
by the weighted sum of the modes' scores, ``s = Σ_h w_h s_h`` (defaults: dense+sparse 1/0.3, all 1/0.3/1)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ..model.defaults import ENSEMBLE_WEIGHTS, HEADS
from .corpus_encoding import EncodedTexts
from .search import Ranking, candidates_scores, sort_ranking

DEFAULT_WEIGHTS = ENSEMBLE_WEIGHTS
DEFAULT_HYBRIDS: dict[str, dict[str, float]] = {
    "dense+sparse": {h: ENSEMBLE_WEIGHTS[h] for h in ("dense", "sparse")},
    "all": dict(ENSEMBLE_WEIGHTS),
}


def hybrids_from_names(names: Sequence[str], weights: Mapping[str, float] | None = None,
                       heads: Sequence[str] = HEADS) -> dict[str, dict[str, float]]:
    """``["dense+sparse", "all"]`` -> {name: {head: weight}}; ``all`` means every head in ``heads`` (left out
    when fewer than two heads are evaluated)."""
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    unknown_w = set(weights) - set(HEADS)
    if unknown_w:
        raise ValueError(f"hybrid weights: unknown head(s) {sorted(unknown_w)}; expected {HEADS}")
    out = {}
    for name in names:
        if name == "all" and len(heads) < 2:
            continue
        parts = list(heads) if name == "all" else name.split("+")
        unknown = [p for p in parts if p not in HEADS]
        if unknown or len(parts) < 2:
            raise ValueError(f"hybrid {name!r}: expected 'all' or at least two of {HEADS} joined by '+'")
        out[name] = {p: float(weights[p]) for p in parts}
    return out


def union_candidates(rankings: Sequence[Ranking], depth: int) -> np.ndarray:
    """(nq, c) union of each ranking's top ``depth`` document indices per query, -1 padded."""
    stacked = np.concatenate([r.indices[:, :depth] for r in rankings], axis=1)
    stacked = np.sort(stacked, axis=1)
    duplicate = np.zeros_like(stacked, dtype=bool)
    duplicate[:, 1:] = stacked[:, 1:] == stacked[:, :-1]
    stacked[duplicate] = -1
    width = int((stacked >= 0).sum(axis=1).max(initial=0))
    # move the valid entries first, keep the widest row's count of columns
    order = np.argsort(stacked < 0, axis=1, kind="stable")
    return np.take_along_axis(stacked, order, axis=1)[:, :max(width, 1)]


def hybrid_search(rankings: Mapping[str, Ranking], weights: Mapping[str, float], queries: EncodedTexts,
                  docs: EncodedTexts, k: int, candidate_depth: int,
                  device: str | torch.device = "cpu") -> Ranking:
    """Re-rank the union of ``rankings[h]``'s top ``candidate_depth`` (h with a weight) by ``Σ_h w_h s_h``."""
    used = [h for h, w in weights.items() if w != 0]
    missing = [h for h in used if h not in rankings]
    if missing:
        raise ValueError(f"hybrid weights {dict(weights)}: no ranking for head(s) {missing}")
    candidates = union_candidates([rankings[h] for h in used], candidate_depth)
    total = np.zeros(candidates.shape, dtype=np.float64)
    for h in used:
        total += weights[h] * candidates_scores(h, queries, docs, candidates, device, rankings[h].table)
    return sort_ranking(candidates, total, k)
