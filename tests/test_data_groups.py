"""Hard-negative groups: distinct negatives, counted repeats, duplicates removed, teacher scores aligned."""
from collections import Counter

import numpy as np

from m3lit.data import TrainRecord
from m3lit.data.collate import choose_group


def record(n_neg, **kw):
    neg = [f"n{j}" for j in range(n_neg)]
    return TrainRecord(query="q", pos=["p0", "p1"], neg=neg, pos_scores=[1.0, 1.1],
                       neg_scores=[j / 100 for j in range(n_neg)], **kw)


def test_distinct_negatives_and_aligned_scores():
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = choose_group(record(10), 8, rng)
        assert len(g.passages) == 8 and g.passages[0] in ("p0", "p1") and g.repeats == 0
        assert len(set(g.passages[1:])) == 7
        assert g.scores[0] == {"p0": 1.0, "p1": 1.1}[g.passages[0]]
        assert g.scores[1:] == [int(t[1:]) / 100 for t in g.passages[1:]]


def test_uniform_choice():
    rng = np.random.default_rng(1)
    counts = Counter(t for _ in range(3000) for t in choose_group(record(6), 3, rng).passages)
    assert abs(counts["p0"] - 1500) < 150
    for j in range(6):
        assert abs(counts[f"n{j}"] - 1000) < 120


def test_too_few_negatives_repeat_after_using_all():
    g = choose_group(record(3), 8, np.random.default_rng(2))
    negs = g.passages[1:]
    assert set(negs) == {"n0", "n1", "n2"} and g.repeats == 4
    assert len(set(negs[:3])) == 3  # every distinct negative before any repeat
    assert g.scores[1:] == [int(t[1:]) / 100 for t in negs]


def test_duplicate_negatives_and_false_negatives_removed():
    rec = TrainRecord(query="q", pos=["p"], neg=["a", "p", "a", "b", "c"])
    g = choose_group(rec, 4, np.random.default_rng(3))
    assert sorted(g.passages[1:]) == ["a", "b", "c"] and g.removed == 2 and g.repeats == 0
    g = choose_group(rec, 6, np.random.default_rng(3))
    assert g.removed == 2 and g.repeats == 2 and set(g.passages[1:]) == {"a", "b", "c"}


def test_group_size_one():
    g = choose_group(record(3), 1, np.random.default_rng(0))
    assert len(g.passages) == 1 and len(g.scores) == 1
