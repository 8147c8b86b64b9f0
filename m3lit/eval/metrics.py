"""Exact ranking metrics against full graded qrels (the definitions of trec_eval / ranx).

For one query with ranked list d_1, d_2, … and grades g(d) (unjudged = 0; grades < 1 count as not relevant):
- ``ndcg@k``   = Σ_{i≤k} g'(d_i) / log2(i + 1)  /  the same sum over the ideal ordering of all judged grades,
  with linear gain g' = g if g ≥ 1 else 0 (Järvelin & Kekäläinen; pytrec_eval's ``ndcg_cut``).
- ``recall@k`` = |{relevant} ∩ top-k| / |{relevant}|  (all relevant judgments, retrieved or not).
- ``mrr@k``    = 1 / rank of the first relevant document within the top k, else 0.
- ``precision@k`` = |{relevant} ∩ top-k| / k  (k even when fewer than k documents were retrieved).
A query with no relevant judgment scores 0. Means are over all queries of the qrels; a query missing from
the run scores 0. Tied scores keep the order the run gives them (stable sort). A document listed twice in a
ranked list counts once, at its first (best) rank.

The per-query values come from torchmetrics' functional retrieval metrics (``retrieval_normalized_dcg``,
``retrieval_recall``, ``retrieval_reciprocal_rank``, ``retrieval_precision``, each with ``top_k=k``) fed the FULL
qrels of the query. The candidates passed are k slots — the top k of the ranked list in rank order, padded with
non-relevant dummies when fewer than k were retrieved, so that the top k never holds an unretrieved document —
followed by every relevant judgment outside that top k (ranked deeper or never retrieved; target = its grade).
torchmetrics sorts by ``preds`` itself (and averages the gains of tied ``preds`` in ndcg), so ``preds`` is the
strictly decreasing k, k-1, …, 1 over the slots (the run's order, ties included) and 0, -1, -2, … after them;
torchmetrics' recall / precision / reciprocal rank also treat ``preds ≤ 0`` as not retrieved, which those
documents are. Targets: clamped grades for ndcg (torchmetrics' ndcg is the linear-gain Σ g / log2(i + 1) with the
ideal over all passed targets, cut at k), ``grade ≥ 1`` for the others.
Identical inputs are computed once (cached), and to make them common over thousands of queries each input is
reduced to what its metric depends on, which leaves the value unchanged: trailing non-relevant slots are left to
the padding; ndcg gets only the k best grades outside the top k (the ideal cut at k uses no more); recall and
precision get their top-k hits first (they only count them); mrr gets nothing after its first hit.
torchmetrics computes in float32 (it casts ``preds`` to float32 — exact for these integers — and accumulates ndcg
in float32), so values agree with the float64 definitions above to about 1e-7 (ndcg@1000: about 2e-6).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Iterable, Mapping, Sequence

import torch
from torchmetrics.functional.retrieval import (
    retrieval_normalized_dcg,
    retrieval_precision,
    retrieval_recall,
    retrieval_reciprocal_rank,
)

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10")
_METRIC = re.compile(r"^(ndcg|recall|mrr|precision)@(\d+)$")
_FUNCTIONS = {
    "ndcg": retrieval_normalized_dcg,
    "recall": retrieval_recall,
    "mrr": retrieval_reciprocal_rank,
    "precision": retrieval_precision,
}


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ("ndcg", 10)."""
    m = _METRIC.match(name.strip().lower())
    if m is None or int(m.group(2)) < 1:
        raise ValueError(f"metric {name!r}: expected one of ndcg@K, recall@K, mrr@K, precision@K with K ≥ 1")
    return m.group(1), int(m.group(2))


def max_cutoff(metrics: Iterable[str]) -> int:
    return max(parse_metric(m)[1] for m in metrics)


@functools.lru_cache(maxsize=1 << 13)
def _torchmetrics_value(kind: str, k: int, top: tuple[int, ...], rest: tuple[int, ...]) -> float:
    """torchmetrics' metric@k of one query whose top-k gains are ``top`` (len ≤ k, rank order) and whose other
    relevant judgments (outside the top k) have gains ``rest``.

    Candidates: ``top``, then non-relevant dummies up to k slots, then ``rest``; preds k, k-1, …, 1 over the k
    slots and 0, -1, … over ``rest`` (strictly decreasing, so torchmetrics' sort reproduces this order and no
    two candidates tie)."""
    target = torch.tensor(top + (0,) * (k - len(top)) + rest, dtype=torch.long)
    preds = torch.arange(k, k - len(target), -1, dtype=torch.float64)
    if kind != "ndcg":
        target = target >= 1  # binary relevance for recall / precision / reciprocal rank
    with torch.inference_mode():
        return float(_FUNCTIONS[kind](preds, target, top_k=k))


def _parsed(metrics: Sequence[str]) -> list[tuple[str, str, int]]:
    return [(m, *parse_metric(m)) for m in metrics]


def _query_values(ranked: Sequence[str], judged: Mapping[str, int], parsed: Sequence[tuple[str, str, int]],
                  ) -> dict[str, float]:
    relevant = {d: int(g) for d, g in judged.items() if g >= 1}  # grades < 1: not relevant (gain 0)
    deepest = max((k for _, _, k in parsed), default=0)
    top_docs = list(ranked[:deepest])
    if len(set(top_docs)) < len(top_docs):  # a doc listed twice counts once, at its first rank
        top_docs = []
        for d in dict.fromkeys(ranked):
            top_docs.append(d)
            if len(top_docs) == deepest:
                break
    gains = [relevant.get(d, 0) for d in top_docs]
    ranks = [i for i, g in enumerate(gains) if g]  # 0-based ranks of the retrieved relevant docs
    retrieved = set(top_docs)
    unretrieved = [g for d, g in relevant.items() if d not in retrieved]  # never retrieved (or ranked too deep)
    out: dict[str, float] = {}
    for name, kind, k in parsed:
        hits = sum(1 for i in ranks if i < k)
        n_rest = len(relevant) - hits  # relevant judgments outside the top k (ranked lower or unretrieved)
        if kind == "ndcg":  # graded targets: the top-k gains in rank order, then the other relevant grades
            top = tuple(gains[: ranks[hits - 1] + 1]) if hits else ()  # trailing zeros = the padding dummies
            rest = tuple(sorted([gains[i] for i in ranks[hits:]] + unretrieved, reverse=True)[:k])
        elif kind == "mrr":  # reciprocal rank only sees the first hit in the top k
            top = (0,) * ranks[0] + (1,) if hits else ()
            rest = (1,) * n_rest
        else:  # recall / precision only count the hits in the top k
            top = (1,) * hits
            rest = (1,) * n_rest
        out[name] = _torchmetrics_value(kind, k, top, rest)
    return out


def query_metrics(ranked: Sequence[str], judged: Mapping[str, int], metrics: Sequence[str] = DEFAULT_METRICS,
                  ) -> dict[str, float]:
    """Metrics of one ranked list of doc ids against one query's judgments {doc id: grade}."""
    return _query_values(ranked, judged, _parsed(metrics))


def evaluate_ranked(ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
                    metrics: Sequence[str] = DEFAULT_METRICS, per_query: bool = False,
                    ) -> dict[str, float] | tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean metrics over the queries of ``qrels``; ``ranked`` maps query id -> doc ids best first.

    With ``per_query=True`` also returns {query id: {metric: value}}.
    """
    parsed = _parsed(metrics)
    if not qrels:
        raise ValueError("evaluate: qrels are empty")
    per: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        per[qid] = _query_values(ranked.get(qid, ()), judged, parsed)
    means = {m: math.fsum(v[m] for v in per.values()) / len(per) for m in metrics}
    return (means, per) if per_query else means


def rank_run(run: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """{query: {doc: score}} -> {query: doc ids by decreasing score}, ties in the run's own order."""
    return {q: sorted(docs, key=lambda d, s=docs: -s[d]) for q, docs in run.items()}


def evaluate_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean metrics of a scored run {query: {doc: score}} (the ranx / pytrec_eval input format)."""
    return evaluate_ranked(rank_run(run), qrels, metrics)
