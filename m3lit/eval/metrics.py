"""Exact ranking metrics against full graded qrels (the definitions of trec_eval / ranx).

For one query with ranked list d_1, d_2, … and grades g(d) (unjudged = 0; grades < 1 count as not relevant):
- ``ndcg@k``   = Σ_{i≤k} g'(d_i) / log2(i + 1)  /  the same sum over the ideal ordering of all judged grades,
  with linear gain g' = g if g ≥ 1 else 0 (Järvelin & Kekäläinen; pytrec_eval's ``ndcg_cut``).
- ``recall@k`` = |{relevant} ∩ top-k| / |{relevant}|  (all relevant judgments, retrieved or not).
- ``mrr@k``    = 1 / rank of the first relevant document within the top k, else 0.
- ``precision@k`` = |{relevant} ∩ top-k| / k.
A query with no relevant judgment scores 0. Means are over all queries of the qrels; a query missing from
the run scores 0. Tied scores keep the order the run gives them (stable sort).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10")
_METRIC = re.compile(r"^(ndcg|recall|mrr|precision)@(\d+)$")


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ("ndcg", 10)."""
    m = _METRIC.match(name.strip().lower())
    if m is None or int(m.group(2)) < 1:
        raise ValueError(f"metric {name!r}: expected one of ndcg@K, recall@K, mrr@K, precision@K with K ≥ 1")
    return m.group(1), int(m.group(2))


def max_cutoff(metrics: Iterable[str]) -> int:
    return max(parse_metric(m)[1] for m in metrics)


def query_metrics(ranked: Sequence[str], judged: Mapping[str, int], metrics: Sequence[str] = DEFAULT_METRICS,
                  ) -> dict[str, float]:
    """Metrics of one ranked list of doc ids against one query's judgments {doc id: grade}."""
    relevant = {d: g for d, g in judged.items() if g >= 1}
    out: dict[str, float] = {}
    if not relevant:
        return {m: 0.0 for m in metrics}
    gains = np.array([relevant.get(d, 0) for d in ranked], dtype=np.float64)
    ideal = np.sort(np.fromiter(relevant.values(), dtype=np.float64))[::-1]
    for name in metrics:
        kind, k = parse_metric(name)
        top = gains[:k]
        if kind == "ndcg":
            discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
            dcg = float(np.dot(top, discounts[: len(top)]))
            idcg = float(np.dot(ideal[:k], discounts[: min(k, len(ideal))]))
            out[name] = dcg / idcg
        elif kind == "recall":
            out[name] = float(np.count_nonzero(top)) / len(relevant)
        elif kind == "precision":
            out[name] = float(np.count_nonzero(top)) / k
        else:
            hits = np.flatnonzero(top)
            out[name] = 1.0 / (hits[0] + 1) if len(hits) else 0.0
    return out


def evaluate_ranked(ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
                    metrics: Sequence[str] = DEFAULT_METRICS, per_query: bool = False,
                    ) -> dict[str, float] | tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean metrics over the queries of ``qrels``; ``ranked`` maps query id -> doc ids best first.

    With ``per_query=True`` also returns {query id: {metric: value}}.
    """
    for m in metrics:
        parse_metric(m)
    if not qrels:
        raise ValueError("evaluate: qrels are empty")
    per: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        per[qid] = query_metrics(ranked.get(qid, ()), judged, metrics)
    means = {m: math.fsum(v[m] for v in per.values()) / len(per) for m in metrics}
    return (means, per) if per_query else means


def rank_run(run: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """{query: {doc: score}} -> {query: doc ids by decreasing score}, ties in the run's own order."""
    return {q: sorted(docs, key=lambda d, s=docs: -s[d]) for q, docs in run.items()}


def evaluate_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean metrics of a scored run {query: {doc: score}} (the ranx / pytrec_eval input format)."""
    return evaluate_ranked(rank_run(run), qrels, metrics)
