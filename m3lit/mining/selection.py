"""Which retrieved passages become a query's hard negatives.

For one query with ranking ``r_0, r_1, …`` (corpus indices, best first, scores ``s``) and positive score
``s⁺`` (the lowest of its positives' scores under the same mode):
1. candidates are the ranks ``[lo, hi)`` of the ranking (``rank_range``);
2. removed: the positives, the query itself, near-duplicates of a positive (character 3-gram Jaccard
   ≥ ``near_duplicate``), and likely false negatives: ``s ≥ s⁺ − margin`` (absolute) or ``s ≥ s⁺ (1 − relative_margin)``
   (relative, for positive scores);
3. ``negatives`` of the rest are drawn (``sample="random"``, without replacement, from a generator seeded per line)
   or the best-ranked ones kept (``sample="top"``); chosen ones are returned in rank order;
4. when too few remain, ``fill="random"`` adds passages drawn from outside the searched ranking (scoring below every
   candidate), never a positive, the query or a near-duplicate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .corpus import jaccard, normalise, shingles

SAMPLES = ("random", "top")
FILLS = ("random", "none")


@dataclass(frozen=True)
class SelectionRules:
    negatives: int = 7
    rank_range: tuple[int, int] = (10, 100)
    margin: float | None = None
    relative_margin: float | None = None
    near_duplicate: float | None = 0.9
    sample: str = "random"
    fill: str = "random"

    def __post_init__(self) -> None:
        lo, hi = self.rank_range
        if not (0 <= lo < hi):
            raise ValueError(f"range={list(self.rank_range)}: expected [lo, hi] with 0 <= lo < hi")
        if self.negatives < 1:
            raise ValueError(f"negatives={self.negatives}: expected at least 1")
        if self.sample not in SAMPLES:
            raise ValueError(f"sample={self.sample!r}: expected one of {SAMPLES}")
        if self.fill not in FILLS:
            raise ValueError(f"fill={self.fill!r}: expected one of {FILLS}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"relative_margin={self.relative_margin}: expected a value in [0, 1)")
        if self.near_duplicate is not None and not 0 < self.near_duplicate <= 1:
            raise ValueError(f"near_duplicate={self.near_duplicate}: expected a value in (0, 1], or null")

    @property
    def search_depth(self) -> int:
        return self.rank_range[1]

    def score_limit(self, positive_score: float) -> float:
        """Candidates scoring at or above this are taken for unlabelled positives."""
        limit = np.inf
        if self.margin is not None:
            limit = min(limit, positive_score - self.margin)
        if self.relative_margin is not None:
            limit = min(limit, positive_score * (1.0 - self.relative_margin))
        return float(limit)


@dataclass
class Selection:
    """The chosen corpus indices (rank order, then fills) and why the other candidates were dropped."""

    chosen: list[int]
    ranks: list[int]                      # rank of each chosen candidate in the ranking (-1 for a fill)
    removed: dict[str, int] = field(default_factory=lambda: {"positive": 0, "duplicate": 0, "margin": 0})
    filled: int = 0


def select_negatives(ranking: np.ndarray, scores: np.ndarray, positive_ids: Sequence[int], positive_score: float,
                     rules: SelectionRules, rng: np.random.Generator, text_of: Callable[[int], str],
                     positives: Sequence[str], query: str, corpus_size: int) -> Selection:
    """Apply ``rules`` to one query's ``ranking`` (corpus indices, -1 = empty) and ``scores``."""
    positive_set = {int(i) for i in positive_ids}
    excluded_keys = {normalise(query)} | {normalise(p) for p in positives}
    positive_shingles = [shingles(p) for p in positives] if rules.near_duplicate is not None else []

    def duplicate(index: int) -> bool:
        text = text_of(index)
        if normalise(text) in excluded_keys:
            return True
        if positive_shingles:
            own = shingles(text)
            return any(jaccard(own, p) >= rules.near_duplicate for p in positive_shingles)
        return False

    removed = {"positive": 0, "duplicate": 0, "margin": 0}
    limit = rules.score_limit(positive_score)
    lo, hi = rules.rank_range
    kept: list[tuple[int, int]] = []  # (rank, corpus index)
    for rank in range(lo, min(hi, len(ranking))):
        index = int(ranking[rank])
        if index < 0:
            break
        if index in positive_set:
            removed["positive"] += 1
        elif duplicate(index):
            removed["duplicate"] += 1
        elif scores[rank] >= limit:
            removed["margin"] += 1
        else:
            kept.append((rank, index))
    if len(kept) > rules.negatives:
        if rules.sample == "random":
            picks = np.sort(rng.choice(len(kept), size=rules.negatives, replace=False))
            kept = [kept[int(i)] for i in picks]
        else:
            kept = kept[:rules.negatives]
    selection = Selection([i for _, i in kept], [r for r, _ in kept], removed)
    if len(kept) < rules.negatives and rules.fill == "random":
        searched = {int(i) for i in ranking if i >= 0}
        _fill_randomly(selection, rules.negatives, searched | positive_set, corpus_size, rng, duplicate)
    return selection


def _fill_randomly(selection: Selection, wanted: int, excluded: set[int], corpus_size: int,
                   rng: np.random.Generator, duplicate: Callable[[int], bool]) -> None:
    """Add passages not in ``excluded`` until ``wanted`` are chosen or the corpus has no more: random draws first,
    then a random permutation of the corpus (small corpora)."""

    def draws():
        for _ in range(20 * wanted):
            yield int(rng.integers(corpus_size))
        yield from (int(i) for i in rng.permutation(corpus_size))

    for index in draws():
        if len(selection.chosen) >= wanted or len(excluded) >= corpus_size:
            break
        if index in excluded:
            continue
        excluded.add(index)
        if duplicate(index):
            continue
        selection.chosen.append(index)
        selection.ranks.append(-1)
        selection.filled += 1
