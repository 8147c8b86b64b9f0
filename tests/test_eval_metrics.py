import math
import random

import pytest
import torch
from ranx import Qrels, Run, evaluate
from torchmetrics.functional.retrieval import (
    retrieval_normalized_dcg,
    retrieval_precision,
    retrieval_recall,
    retrieval_reciprocal_rank,
)

from m3lit.eval.metrics import evaluate_ranked, evaluate_run, parse_metric, query_metrics

METRICS = ["ndcg@10", "recall@100", "mrr@10", "ndcg@3", "recall@5", "precision@5"]
RANX_NAMES = {"precision@5": "precision@5"}


def ranx_means(qrels, run, metrics):
    got = evaluate(Qrels(qrels), Run(run), [RANX_NAMES.get(m, m) for m in metrics], make_comparable=True)
    if len(metrics) == 1:
        got = {metrics[0]: got}
    return {m: float(got[RANX_NAMES.get(m, m)]) for m in metrics}


def test_hand_computed_values():
    judged = {"a": 2, "b": 1, "z": 1}  # z is never retrieved
    ranked = ["c", "b", "a", "d"]
    got = query_metrics(ranked, judged, ["ndcg@10", "recall@100", "mrr@10", "recall@2"])
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-6)  # torchmetrics computes ndcg in float32
    assert got["recall@100"] == pytest.approx(2 / 3)
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert got["mrr@10"] == pytest.approx(0.5)


def test_graded_missing_and_tied_judgments_match_ranx():
    qrels = {
        "q1": {"a": 2, "b": 1, "z": 1},          # z: relevant, never retrieved
        "q2": {"c": 0},                            # judged, nothing relevant -> 0
        "q3": {"x": 1},                            # missing from the run -> 0
        "q4": {"a": 3, "b": 2, "c": 1, "e": 0},    # graded, ties across grades
        "q5": {"m": 1, "n": 1},
    }
    run = {
        "q1": {"c": 0.5, "b": 0.5, "a": 0.5, "d": 0.1},      # three-way tie, in run order
        "q2": {"c": 1.0, "a": 0.2},
        "q4": {"e": 0.9, "c": 0.9, "b": 0.9, "a": 0.3, "f": 0.3, "g": 0.9},
        "q5": {"u": 2.0, "v": 2.0, "w": 2.0, "m": 1.0, "n": -1.0},  # negative scores still ranked
        "q6": {"a": 1.0},                                  # not in qrels: ignored
    }
    ours = evaluate_run(run, qrels, METRICS)
    theirs = ranx_means(qrels, run, METRICS)
    for m in METRICS:
        assert ours[m] == pytest.approx(theirs[m], abs=1e-6), m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_deep_runs_match_ranx(seed):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(400)]
    qrels, run = {}, {}
    for q in range(40):
        judged = rng.sample(docs, rng.randint(1, 12))
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        retrieved = rng.sample(docs, 150) + judged[:2]  # judged docs are often retrieved
        run[f"q{q}"] = {d: rng.uniform(-1, 1) for d in retrieved}  # distinct scores, some negative
    ours = evaluate_run(run, qrels, METRICS)
    theirs = ranx_means(qrels, run, METRICS)
    for m in METRICS:
        assert ours[m] == pytest.approx(theirs[m], abs=1e-6), m


def test_ties_follow_run_order():
    qrels = {"q": {"b": 1}}
    assert evaluate_run({"q": {"a": 1.0, "b": 1.0}}, qrels, ["mrr@10"])["mrr@10"] == 0.5
    assert evaluate_run({"q": {"b": 1.0, "a": 1.0}}, qrels, ["mrr@10"])["mrr@10"] == 1.0


def test_per_query_and_missing_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    means, per = evaluate_ranked({"q1": ["a"]}, qrels, ["mrr@10"], per_query=True)
    assert per == {"q1": {"mrr@10": 1.0}, "q2": {"mrr@10": 0.0}}
    assert means["mrr@10"] == 0.5


@pytest.mark.parametrize("name", ["ndcg", "ndcg@0", "map@10", "recall@x"])
def test_bad_metric_names(name):
    with pytest.raises(ValueError, match="metric"):
        parse_metric(name)


def reference(ranked, judged, name):
    """Plain re-computation of the module docstring's definitions (float64, no torchmetrics)."""
    kind, k = name.split("@")
    k = int(k)
    rel = {d: g for d, g in judged.items() if g >= 1}
    if not rel:
        return 0.0
    top = list(dict.fromkeys(ranked))[:k]
    hits = [i for i, d in enumerate(top) if d in rel]
    if kind == "ndcg":
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(rel.values(), reverse=True)[:k]))
        return dcg / idcg
    if kind == "recall":
        return len(hits) / len(rel)
    if kind == "precision":
        return len(hits) / k
    return 1.0 / (hits[0] + 1) if hits else 0.0


REF_METRICS = ["ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20", "recall@1", "recall@5", "recall@20",
               "mrr@1", "mrr@3", "mrr@10", "precision@1", "precision@5", "precision@20"]


def random_case(seed, n_queries=80):
    """Graded qrels 0/1/2/3 with relevant docs retrieved, ranked deeper than every cutoff, or never retrieved;
    ranked lists from empty to deeper than the cutoffs (often shorter than k); queries with no relevant
    judgment; queries missing from the run; queries of the run missing from the qrels."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels, ranked = {}, {}
    for q in range(n_queries):
        judged = rng.sample(docs, rng.randint(1, 10))
        grades = [0, 0] if q % 7 == 0 else [0, 1, 2, 3]  # every 7th query: nothing relevant
        qrels[f"q{q}"] = {d: rng.choice(grades) for d in judged}
        if q % 5 != 0:  # every 5th query: missing from the run
            ranked[f"q{q}"] = rng.sample(docs, rng.choice([0, 1, 2, 3, 4, 8, 12, 25, 40]))
    ranked["not-judged"] = docs[:10]
    return qrels, ranked


@pytest.mark.parametrize("seed", range(4))
def test_torchmetrics_path_equals_plain_reference(seed):
    qrels, ranked = random_case(seed)
    means, per = evaluate_ranked(ranked, qrels, REF_METRICS, per_query=True)
    assert set(per) == set(qrels)
    for qid, judged in qrels.items():
        for m in REF_METRICS:
            assert per[qid][m] == pytest.approx(reference(ranked.get(qid, ()), judged, m), abs=1e-6), (qid, m)
    for m in REF_METRICS:
        expected = math.fsum(reference(ranked.get(q, ()), j, m) for q, j in qrels.items()) / len(qrels)
        assert means[m] == pytest.approx(expected, abs=1e-6), m
    # the edge cases are really there and score 0
    assert any(per[q]["recall@20"] == 0 and q in ranked for q in qrels)
    assert all(v == 0.0 for q in qrels if q not in ranked for v in per[q].values())
    assert all(v == 0.0 for q, j in qrels.items() if max(j.values()) < 1 for v in per[q].values())


def literal_torchmetrics(ranked, judged, name):
    """torchmetrics fed literally: the whole ranked list in rank order (padded with non-relevant dummies to k),
    then every relevant document never retrieved; strictly decreasing preds, > 0 only for the retrieved."""
    kind, k = name.split("@")
    k = int(k)
    rel = {d: max(g, 0) for d, g in judged.items()}
    slots = list(ranked) + [None] * max(0, k - len(ranked))
    unretrieved = [d for d, g in rel.items() if g >= 1 and d not in ranked]
    target = torch.tensor([rel.get(d, 0) if d is not None else 0 for d in slots] + [rel[d] for d in unretrieved])
    preds = torch.arange(len(slots), len(slots) - len(target), -1, dtype=torch.float64)
    if kind != "ndcg":
        target = target >= 1
    fn = {"ndcg": retrieval_normalized_dcg, "recall": retrieval_recall, "mrr": retrieval_reciprocal_rank,
          "precision": retrieval_precision}[kind]
    return float(fn(preds, target, top_k=k))


@pytest.mark.parametrize("seed", range(2))
def test_reduced_inputs_equal_literal_torchmetrics_calls(seed):
    # the module hands torchmetrics inputs reduced to what each metric depends on: same values as the literal call
    qrels, ranked = random_case(seed, n_queries=40)
    per = evaluate_ranked(ranked, qrels, REF_METRICS, per_query=True)[1]
    for qid, judged in qrels.items():
        for m in REF_METRICS:
            assert per[qid][m] == pytest.approx(literal_torchmetrics(ranked.get(qid, []), judged, m), abs=1e-6)


def test_unretrieved_relevant_docs_are_not_counted_as_retrieved():
    # fewer than k retrieved: the relevant docs never retrieved must stay out of the top k
    judged = {"a": 1, "z1": 3, "z2": 2, "z3": 1}
    got = query_metrics(["x"], judged, ["ndcg@10", "recall@10", "mrr@10", "precision@10"])
    assert got == {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "precision@10": 0.0}
    got = query_metrics(["x", "a"], judged, ["ndcg@10", "recall@10", "mrr@10", "precision@10"])
    idcg = 3 + 2 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)
    assert got["ndcg@10"] == pytest.approx((1 / math.log2(3)) / idcg, abs=1e-6)
    assert got["recall@10"] == pytest.approx(1 / 4)
    assert got["mrr@10"] == pytest.approx(1 / 2)
    assert got["precision@10"] == pytest.approx(1 / 10)  # divided by k, not by the 2 retrieved
    # nothing retrieved at all, and a query missing from the run
    assert set(query_metrics([], judged, ["ndcg@3", "recall@3"]).values()) == {0.0}
    assert evaluate_ranked({}, {"q": judged}, ["recall@100", "mrr@10"]) == {"recall@100": 0.0, "mrr@10": 0.0}


def test_grades_below_one_are_not_relevant():
    judged = {"a": 0, "b": -1, "c": 1}
    got = query_metrics(["a", "b", "c"], judged, ["ndcg@10", "recall@10", "mrr@10", "precision@2"])
    assert got["ndcg@10"] == pytest.approx(1 / math.log2(4) / 1.0, abs=1e-6)
    assert got["recall@10"] == 1.0 and got["mrr@10"] == pytest.approx(1 / 3) and got["precision@2"] == 0.0
