"""Evaluate an encoder on BEIR datasets: every head and the hybrids, per dataset, plus the average.

The encoder is any object with ``encode(texts, batch_size=, max_length=, return_dense=, return_sparse=,
return_colbert=) -> {"dense": (n, d), "sparse": [{id: w}], "colbert": [(L, d_c)]}`` (e.g. ``M3Embedder``);
a ``tokenizer`` attribute, when present, enables token-budget batching and truncation counts.
"""
from __future__ import annotations

import inspect
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..inference.mcls import MCLS_INTERVAL
from ..model.defaults import HEADS
from .beir import BeirDataset, load_beir_datasets
from .corpus_encoding import EncodedTexts, SharedTextCache, encode_texts
from .hybrid import DEFAULT_HYBRIDS, hybrid_search
from .metrics import DEFAULT_METRICS, evaluate_ranked, max_cutoff
from .search import Ranking, colbert_search, dense_search, rerank, sparse_search
from .tables import AVERAGE_KEY, PER_QUERY_KEY, STATS_KEY, average_results, format_results

log = logging.getLogger(__name__)


@dataclass
class RetrievalSettings:
    """How to encode and search. ``hybrids=None`` means the defaults whose heads are all evaluated."""

    heads: tuple[str, ...] = HEADS
    hybrids: Mapping[str, Mapping[str, float]] | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    batch_size: int = 256                  # most texts in one encode call
    max_tokens: int = 16384                # token budget of one encode call (rows × longest)
    max_length: int = 512                  # passage max tokens (up to 8192 for long documents)
    query_max_length: int = 512
    candidate_depth: int | None = None     # per-mode candidates for hybrids; None = largest metric cutoff
    colbert_exhaustive_max_docs: int = 20000  # larger corpora: multi-vector re-ranks the dense top-k
    colbert_rerank_depth: int = 100
    dense_backend: str = "torch"           # or "faiss" (exact IndexFlatIP)
    device: str | None = None              # search device; None = the encoder's device (else cpu)
    mcls: bool = False                     # passages with a CLS every mcls_interval tokens (dense = mean)
    mcls_interval: int = MCLS_INTERVAL
    encode_kwargs: Mapping[str, Any] = field(default_factory=dict)
    per_query: bool = False                # also each query's metric values ("per_query" of every dataset)

    def __post_init__(self) -> None:
        self.heads = tuple(self.heads)
        self.metrics = tuple(self.metrics)
        bad = [h for h in self.heads if h not in HEADS]
        if bad or not self.heads:
            raise ValueError(f"heads={list(self.heads)}: expected a non-empty subset of {list(HEADS)}")
        max_cutoff(self.metrics)  # validates metric names
        if self.dense_backend not in ("torch", "faiss"):
            raise ValueError(f"dense_backend={self.dense_backend!r}: expected 'torch' or 'faiss'")
        for name in ("batch_size", "max_tokens", "max_length", "query_max_length", "colbert_rerank_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be ≥ 1")
        for name, weights in self.active_hybrids.items():
            missing = [h for h in weights if h not in self.heads]
            if missing:
                raise ValueError(f"hybrid {name!r} uses head(s) {missing} that are not in heads={list(self.heads)}")
            if name in HEADS:
                raise ValueError(f"hybrid name {name!r} clashes with a head name")

    def restricted_to(self, available: Sequence[str]) -> "RetrievalSettings":
        """These settings for a model that has only the heads ``available`` (the ones it trained): the other heads
        left out, ``all`` over the remaining heads, and the other hybrids kept only when all their heads remain."""
        heads = tuple(h for h in self.heads if h in available)
        if heads == self.heads:
            return self
        if not heads:
            raise ValueError(f"heads={list(self.heads)}: none of them is trained (model heads: {list(available)})")
        hybrids = {}
        for name, weights in self.active_hybrids.items():
            if name == "all":  # every evaluated head
                weights = {h: w for h, w in weights.items() if h in heads}
            if set(weights) <= set(heads) and len(weights) > 1:
                hybrids[name] = weights
        return replace(self, heads=heads, hybrids=hybrids)

    @property
    def active_hybrids(self) -> dict[str, dict[str, float]]:
        if self.hybrids is None:
            return {n: dict(w) for n, w in DEFAULT_HYBRIDS.items() if set(w) <= set(self.heads)}
        return {n: {h: float(x) for h, x in w.items()} for n, w in self.hybrids.items()}


def _search_device(encoder: Any, settings: RetrievalSettings) -> str:
    if settings.device is not None:
        return settings.device
    device = getattr(encoder, "device", None)
    return str(device) if device is not None else "cpu"


def _colbert_exhaustive(dataset: BeirDataset, settings: RetrievalSettings) -> bool:
    return len(dataset.corpus) <= settings.colbert_exhaustive_max_docs


def _encode_heads(dataset: BeirDataset, settings: RetrievalSettings) -> list[str]:
    heads = list(settings.heads)
    if "colbert" in heads and "dense" not in heads and not _colbert_exhaustive(dataset, settings):
        heads.append("dense")
    return heads


def _roles(dataset: BeirDataset, settings: RetrievalSettings) -> tuple[str, str]:
    """Cache roles of (queries, passages): texts encoded the same way share a role."""
    heads = ",".join(_encode_heads(dataset, settings))
    return f"query:{heads}", f"passage:{heads}"


def shared_text_cache(datasets: Sequence[BeirDataset], settings: RetrievalSettings) -> SharedTextCache:
    """A cache for the texts that several of ``datasets`` contain (counted per encoding role)."""
    uses: Counter[tuple[str, str]] = Counter()
    for dataset in datasets:
        query_role, passage_role = _roles(dataset, settings)
        uses.update((passage_role, t) for t in dataset.corpus.values())
        uses.update((query_role, t) for t in dataset.queries.values())
    return SharedTextCache(uses)


def require_mcls(encoder: Any) -> Any:
    """``encoder`` if its ``encode`` takes ``mcls`` (as ``M3Embedder.encode`` does), else a clear error."""
    params = inspect.signature(encoder.encode).parameters
    if "mcls" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return encoder
    raise ValueError(f"mcls=True: {type(encoder).__name__}.encode has no `mcls` option (use an M3Embedder)")


def encode_dataset(encoder: Any, dataset: BeirDataset, settings: RetrievalSettings,
                   cache: SharedTextCache | None = None) -> tuple[EncodedTexts, EncodedTexts]:
    """(queries, documents) encoded with the heads the search needs (dense too when multi-vector re-ranks)."""
    heads = _encode_heads(dataset, settings)
    query_role, passage_role = _roles(dataset, settings)
    passage_kwargs = dict(settings.encode_kwargs)
    if settings.mcls:
        passage_kwargs.update(mcls=True, mcls_interval=settings.mcls_interval)
        require_mcls(encoder)
    docs = encode_texts(encoder, list(dataset.corpus.values()), heads, settings.max_length, settings.batch_size,
                        settings.max_tokens, passage_kwargs, settings.mcls_interval if settings.mcls else None,
                        desc=f"{dataset.name} corpus", cache=cache, role=passage_role)
    queries = encode_texts(encoder, list(dataset.queries.values()), heads, settings.query_max_length,
                           settings.batch_size, settings.max_tokens, settings.encode_kwargs,
                           desc=f"{dataset.name} queries", cache=cache, role=query_role)
    return queries, docs


def search_dataset(dataset: BeirDataset, queries: EncodedTexts, docs: EncodedTexts, settings: RetrievalSettings,
                   device: str = "cpu") -> dict[str, Any]:
    """Search every head and hybrid over encoded texts (in the dataset's query / corpus order) and score the
    rankings: {mode: {metric: value}, "stats": {...}} (+ "per_query": {mode: {metric: {query id: value}}} with
    ``settings.per_query``)."""
    k = max_cutoff(settings.metrics)
    depth = settings.candidate_depth or k
    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    heads = list(settings.heads)
    exhaustive = _colbert_exhaustive(dataset, settings)
    timings: dict[str, float] = {}
    rankings: dict[str, Ranking] = {}

    def timed(mode: str, fn: Any, *args: Any) -> Ranking:
        start = time.perf_counter()
        ranking = fn(*args)
        timings[f"search_{mode}_s"] = round(time.perf_counter() - start, 3)
        return ranking

    if queries.dense is not None and docs.dense is not None:
        rankings["dense"] = timed("dense", dense_search, queries.dense, docs.dense,
                                  max(k, depth, settings.colbert_rerank_depth), 65536, 1024, device,
                                  settings.dense_backend)
    if "sparse" in heads:
        rankings["sparse"] = timed("sparse", sparse_search, queries.sparse, docs.sparse, max(k, depth))
    if "colbert" in heads:
        if exhaustive:
            rankings["colbert"] = timed("colbert", colbert_search, queries.colbert, docs.colbert, max(k, depth),
                                        8192, 4096, device)
        else:
            candidates = rankings["dense"].indices[:, :settings.colbert_rerank_depth]
            rankings["colbert"] = timed("colbert", rerank, "colbert", queries, docs, candidates, max(k, depth),
                                        device)
    modes = {h: rankings[h] for h in heads}
    for name, weights in settings.active_hybrids.items():
        modes[name] = timed(name, hybrid_search, rankings, weights, queries, docs, k, depth, device)
    out: dict[str, Any] = {}
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for mode, ranking in modes.items():
        ranked = {qid: [doc_ids[j] for j in ranking.indices[i, :k] if j >= 0] for i, qid in enumerate(query_ids)}
        out[mode], per = evaluate_ranked(ranked, dataset.qrels, settings.metrics, per_query=True)
        if settings.per_query:
            per_query[mode] = {m: {qid: values[m] for qid, values in per.items()} for m in settings.metrics}
    if settings.per_query:
        out[PER_QUERY_KEY] = per_query
    out[STATS_KEY] = {
        "queries": len(query_ids), "corpus": len(doc_ids),
        "max_length": docs.max_length, "query_max_length": queries.max_length,
        "truncated_passages": docs.truncated, "truncated_queries": queries.truncated,
        "passage_tokens": docs.tokens, "query_tokens": queries.tokens,
        "colbert_search": "exhaustive" if exhaustive else f"rerank_dense@{settings.colbert_rerank_depth}",
        **sparse_health(docs),
        "encode_corpus_s": round(docs.seconds, 3), "encode_queries_s": round(queries.seconds, 3),
        **timings,
    }
    return out


def sparse_health(docs: EncodedTexts) -> dict[str, float]:
    """The corpus's sparse vectors: ``sparse_zero_frac`` (share of texts with no non-zero weight — a collapsed
    lexical head) and ``sparse_nnz`` (mean non-zero tokens per text); {} without sparse vectors."""
    if docs.sparse is None or docs.sparse.shape[0] == 0:
        return {}
    sizes = np.asarray((docs.sparse > 0).sum(axis=1)).ravel()
    return {"sparse_zero_frac": float(np.mean(sizes == 0)), "sparse_nnz": float(np.mean(sizes))}


def evaluate_dataset(encoder: Any, dataset: BeirDataset, settings: RetrievalSettings,
                     cache: SharedTextCache | None = None) -> dict[str, Any]:
    """{mode: {metric: value}, "stats": {...}} for one dataset: encode, then search."""
    queries, docs = encode_dataset(encoder, dataset, settings, cache)
    return search_dataset(dataset, queries, docs, settings, _search_device(encoder, settings))


def as_datasets(beir: Any, split: str = "test", datasets: Sequence[str] | None = None,
                max_queries: int | None = None) -> list[BeirDataset]:
    """BeirDataset list from a folder, a folder of folders, a {name: folder} mapping, datasets, or a list."""
    if isinstance(beir, BeirDataset):
        return [beir]
    if isinstance(beir, (str, os.PathLike)):
        return load_beir_datasets(os.fspath(beir), split=split, names=list(datasets) if datasets else None,
                                  max_queries=max_queries)
    if isinstance(beir, Mapping):  # {name: folder}
        out = []
        for name, path in beir.items():
            loaded = load_beir_datasets(os.fspath(path), split=split, max_queries=max_queries)
            single = len(loaded) == 1
            out += [replace(d, name=name if single else f"{name}/{d.name}") for d in loaded]
        return out
    if isinstance(beir, Sequence):
        out = []
        for item in beir:
            out += as_datasets(item, split, datasets, max_queries)
        return out
    raise TypeError(f"beir: expected a folder, a {{name: folder}} mapping or BeirDataset(s), got {type(beir)}")


def evaluate_beir(encoder: Any, beir: Any, split: str = "test", datasets: Sequence[str] | None = None,
                  max_queries: int | None = None, print_table: bool = False,
                  baselines: Mapping[str, Mapping[str, float]] | None = None,
                  settings: RetrievalSettings | None = None, **options: Any) -> dict[str, Any]:
    """Evaluate ``encoder`` on BEIR data; returns ``{dataset: {mode: {metric: v}, "stats": {...}}, …,
    "average": {mode: {metric: v}}}`` with modes = heads + hybrids.

    beir: a dataset folder, a folder of dataset folders, a {name: folder} mapping, or BeirDataset(s).
    options: fields of :class:`RetrievalSettings` (heads, hybrids, metrics, batch_size, max_tokens, max_length,
    query_max_length, candidate_depth, colbert_exhaustive_max_docs, colbert_rerank_depth, dense_backend,
    device, mcls, encode_kwargs). ``print_table`` prints one table per metric.
    """
    known = {f.name for f in fields(RetrievalSettings)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"evaluate_beir: unknown option(s) {sorted(unknown)}; expected {sorted(known)}")
    settings = replace(settings, **options) if settings is not None else RetrievalSettings(**options)
    results: dict[str, Any] = {}
    loaded = as_datasets(beir, split, datasets, max_queries)
    cache = shared_text_cache(loaded, settings) if len(loaded) > 1 else None
    for dataset in loaded:
        start = time.perf_counter()
        results[dataset.name] = evaluate_dataset(encoder, dataset, settings, cache)
        log.info("%s: %d queries, %d documents evaluated in %.1fs", dataset.name, len(dataset.queries),
                 len(dataset.corpus), time.perf_counter() - start)
    if not results:
        raise ValueError(f"beir={beir!r}: no dataset to evaluate")
    results[AVERAGE_KEY] = average_results(results)
    if print_table:
        print(format_results(results, baselines))
    return results
