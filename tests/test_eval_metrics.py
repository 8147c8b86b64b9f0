import math
import random

import pytest
from ranx import Qrels, Run, evaluate

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
    assert got["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
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
