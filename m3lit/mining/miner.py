"""Mine hard negatives for a FlagEmbedding training file with a model's own heads.

The corpus is encoded once (dense float32 vectors and/or the sparse head as CSR; never the multi-vector head);
the training file is then read in chunks of ``chunk_lines`` lines: their queries and positives are encoded, each
query's top ``range[1]`` passages are retrieved by ``mode`` — ``dense`` (inner product; faiss ``IndexFlatIP``
when installed), ``sparse`` (lexical matching) or ``dense+sparse`` (the union of both top lists re-ranked by
``w_d s_d + w_s s_s``) — negatives are chosen by :mod:`m3lit.mining.selection`, and the lines are written with
their new ``neg`` (every other field kept). With ``scores=True`` each line also gets ``pos_scores`` /
``neg_scores``: the ensemble ``Σ_h w_h s_h`` of every trained head (the self-distillation teacher's score); without
it, score fields of the input are dropped (they scored the old negatives). The output appears complete or not at all.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Mapping, Sequence

import numpy as np

from ..data.records import iter_file_records
from ..eval.corpus_encoding import EncodedTexts, encode_texts
from ..eval.hybrid import hybrid_search
from ..eval.search import Ranking, dense_search, same_width, sort_ranking, sparse_search
from ..files import write_file_atomically
from ..model.defaults import ENSEMBLE_WEIGHTS, HEADS
from .corpus import MiningCorpus, corpus_from_training_file
from .selection import SelectionRules, select_negatives

log = logging.getLogger(__name__)

MODES = ("dense", "sparse", "dense+sparse")
MODE_ALIASES = {"hybrid": "dense+sparse"}
DENSE_BACKENDS = ("auto", "torch", "faiss")


def mode_heads(mode: str) -> tuple[str, ...]:
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES} (or 'hybrid' = dense+sparse)")
    return tuple(mode.split("+"))


@dataclass
class MiningSettings:
    """How texts are encoded and searched (the selection rules are :class:`SelectionRules`)."""

    mode: str = "dense"
    hybrid_weights: Mapping[str, float] = field(default_factory=lambda: dict(ENSEMBLE_WEIGHTS))
    query_max_length: int = 512
    passage_max_length: int = 512
    batch_size: int = 256
    max_tokens: int = 16384
    chunk_lines: int = 4096
    dense_backend: str = "auto"
    seed: int = 0
    scores: bool = False
    score_weights: Mapping[str, float] = field(default_factory=lambda: dict(ENSEMBLE_WEIGHTS))
    prompt: str | None = None            # query prefix for lines without their own ``prompt``
    prompt_format: str = "{}{}"

    def __post_init__(self) -> None:
        self.mode = MODE_ALIASES.get(self.mode, self.mode)
        mode_heads(self.mode)
        if self.dense_backend not in DENSE_BACKENDS:
            raise ValueError(f"dense_backend={self.dense_backend!r}: expected one of {DENSE_BACKENDS}")
        if self.chunk_lines < 1:
            raise ValueError(f"chunk_lines={self.chunk_lines}: expected at least 1")

    @property
    def heads(self) -> tuple[str, ...]:
        return mode_heads(self.mode)


@dataclass
class MiningReport:
    lines: int = 0
    corpus: int = 0
    negatives: int = 0
    filled: int = 0
    short_lines: int = 0                 # lines that got fewer negatives than asked for
    removed: dict[str, int] = field(default_factory=lambda: {"positive": 0, "duplicate": 0, "margin": 0})
    mean_rank: float = float("nan")
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"mined {self.lines} lines against {self.corpus} passages: {self.negatives} negatives "
                f"(mean rank {self.mean_rank:.1f}; {self.filled} random fills; {self.short_lines} lines short); "
                f"candidates removed: {self.removed['positive']} positives, {self.removed['duplicate']} "
                f"duplicates, {self.removed['margin']} within the margin; {self.seconds:.1f} s")


class DenseIndex:
    """Exact inner-product search over fixed corpus vectors: faiss ``IndexFlatIP`` built once, or torch."""

    def __init__(self, vectors: np.ndarray, backend: str = "auto"):
        if backend == "auto":
            try:
                import faiss  # noqa: F401  (only whether it is installed)
                backend = "faiss"
            except ImportError:
                backend = "torch"
        self.backend, self.vectors = backend, vectors
        if backend == "faiss":
            import faiss

            self.index = faiss.IndexFlatIP(vectors.shape[1])
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> Ranking:
        if self.backend == "torch":
            return dense_search(queries, self.vectors, k)
        scores, indices = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.vectors)))
        return sort_ranking(indices.astype(np.int64), scores, k)


def pair_scores(mode_weights: Mapping[str, float], queries: EncodedTexts, passages: EncodedTexts,
                rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Σ_h w_h s_h(query rows[i], passage cols[i]) for dense and sparse heads."""
    out = np.zeros(len(rows), dtype=np.float64)
    if "dense" in mode_weights:
        out += mode_weights["dense"] * np.einsum("nd,nd->n", queries.dense[rows], passages.dense[cols])
    if "sparse" in mode_weights:
        q, p = same_width(queries.sparse, passages.sparse)
        out += mode_weights["sparse"] * np.asarray(q[rows].multiply(p[cols]).sum(axis=1)).ravel()
    return out


def ensemble_scores(embedder: Any, queries: Sequence[str], texts: Sequence[Sequence[str]],
                    weights: Mapping[str, float], settings: MiningSettings) -> list[list[float]]:
    """Per query, ``Σ_h w_h s_h`` of each of its texts over every trained head (dense, sparse, multi-vector)."""
    heads = [h for h in HEADS if h in embedder.trained_heads and weights.get(h, 0)]
    flat = [t for group in texts for t in group]
    kw = {f"return_{h}": h in heads for h in HEADS}
    q = embedder.encode(list(queries), settings.batch_size, settings.query_max_length, **kw)
    p = embedder.encode(flat, settings.batch_size, settings.passage_max_length, **kw)
    out, k = [], 0
    for i, group in enumerate(texts):
        row = []
        for _ in group:
            s = 0.0
            if "dense" in heads:
                s += weights["dense"] * float(q["dense"][i] @ p["dense"][k])
            if "sparse" in heads:
                s += weights["sparse"] * embedder.lexical_matching_score(q["sparse"][i], p["sparse"][k])
            if "colbert" in heads:
                s += weights["colbert"] * embedder.colbert_score(q["colbert"][i], p["colbert"][k])
            row.append(round(s, 6))
            k += 1
        out.append(row)
    return out


def _chunks(path: str, size: int) -> Iterator[list[tuple[int, str, Any]]]:
    chunk = []
    for item in iter_file_records(path):
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _open_output(f: IO[bytes], path: str) -> IO[str]:
    raw: IO[bytes] = gzip.GzipFile(fileobj=f, mode="wb") if path.endswith(".gz") else f
    return io.TextIOWrapper(raw, encoding="utf-8", newline="\n")


def mine_file(embedder: Any, data: str, output: str, rules: SelectionRules, settings: MiningSettings,
              corpus: MiningCorpus | None = None) -> MiningReport:
    """Mine ``data`` (FlagEmbedding jsonl[.gz]) into ``output`` (.jsonl or .jsonl.gz); returns the counts."""
    start = time.perf_counter()
    embedder.check_heads(settings.heads)
    corpus = corpus or corpus_from_training_file(data)
    log.info("mining corpus: %d passages from %s; mode %s", len(corpus), corpus.source, settings.mode)
    docs = encode_texts(embedder, corpus.texts, settings.heads, settings.passage_max_length, settings.batch_size,
                        settings.max_tokens, desc="mining corpus")
    dense_index = DenseIndex(docs.dense, settings.dense_backend) if "dense" in settings.heads else None
    weights = {h: float(settings.hybrid_weights[h]) for h in settings.heads} if len(settings.heads) > 1 \
        else {settings.heads[0]: 1.0}
    report = MiningReport(corpus=len(corpus))
    ranks: list[int] = []

    def write(f: IO[bytes]) -> None:
        out = _open_output(f, output)
        for chunk in _chunks(data, settings.chunk_lines):
            for line in _mine_chunk(embedder, chunk, corpus, docs, dense_index, weights, rules, settings, report,
                                    ranks):
                out.write(line + "\n")
            log.info("mined %d lines", report.lines)
        out.flush()
        inner = out.detach()  # the caller closes ``f``; a gzip stream must write its trailer first
        if inner is not f:
            inner.close()

    write_file_atomically(output, write, binary=True)
    report.mean_rank = float(np.mean(ranks)) if ranks else float("nan")
    report.seconds = time.perf_counter() - start
    return report


def _search(queries: EncodedTexts, docs: EncodedTexts, dense_index: DenseIndex | None, weights: Mapping[str, float],
            k: int) -> Ranking:
    rankings = {}
    if "dense" in weights:
        rankings["dense"] = dense_index.search(queries.dense, k)
    if "sparse" in weights:
        rankings["sparse"] = sparse_search(queries.sparse, docs.sparse, k)
    if len(rankings) == 1:
        return next(iter(rankings.values()))
    return hybrid_search(rankings, weights, queries, docs, k, candidate_depth=k)


def _mine_chunk(embedder: Any, chunk: list, corpus: MiningCorpus, docs: EncodedTexts, dense_index: DenseIndex | None,
                weights: Mapping[str, float], rules: SelectionRules, settings: MiningSettings, report: MiningReport,
                ranks: list[int]) -> Iterator[str]:
    records = [rec for _, _, rec in chunk]
    query_texts = []
    for rec in records:
        prompt = rec.prompt if rec.prompt is not None else settings.prompt
        query_texts.append(settings.prompt_format.format(prompt, rec.query) if prompt else rec.query)
    heads = settings.heads
    queries = encode_texts(embedder, query_texts, heads, settings.query_max_length, settings.batch_size,
                           settings.max_tokens, desc="mining queries")
    pos_texts = [p for rec in records for p in rec.pos]
    pos_rows = np.repeat(np.arange(len(records)), [len(rec.pos) for rec in records])
    in_corpus = [corpus.find(p) for p in pos_texts]
    if all(j is not None for j in in_corpus):  # the default corpus holds every positive: its encodings serve
        pos_scores = pair_scores(weights, queries, docs, pos_rows, np.array(in_corpus, dtype=np.int64))
    else:
        positives = encode_texts(embedder, pos_texts, heads, settings.passage_max_length, settings.batch_size,
                                 settings.max_tokens, desc="mining positives")
        pos_scores = pair_scores(weights, queries, positives, pos_rows, np.arange(len(pos_texts)))
    ranking = _search(queries, docs, dense_index, weights, rules.search_depth)
    chosen_texts = []
    first_pos = np.r_[0, np.cumsum([len(rec.pos) for rec in records])[:-1]]
    lowest_pos_score = np.minimum.reduceat(pos_scores, first_pos)  # every line has at least one positive
    for i, ((line_no, _, rec), pos_score) in enumerate(zip(chunk, lowest_pos_score)):
        rng = np.random.default_rng([settings.seed, line_no])
        selection = select_negatives(ranking.indices[i], ranking.scores[i],
                                     [j for j in in_corpus[first_pos[i]:first_pos[i] + len(rec.pos)]
                                      if j is not None],
                                     float(pos_score), rules, rng, corpus.texts.__getitem__, rec.pos, rec.query,
                                     len(corpus))
        for key, n in selection.removed.items():
            report.removed[key] += n
        report.filled += selection.filled
        report.negatives += len(selection.chosen)
        report.short_lines += len(selection.chosen) < rules.negatives
        ranks.extend(r for r in selection.ranks if r >= 0)
        chosen_texts.append([corpus.texts[j] for j in selection.chosen])
    scores = (ensemble_scores(embedder, query_texts, [[*rec.pos, *neg] for rec, neg in zip(records, chosen_texts)],
                              settings.score_weights, settings) if settings.scores else None)
    for i, ((_, raw, rec), neg) in enumerate(zip(chunk, chosen_texts)):
        obj = json.loads(raw)
        obj["neg"] = neg
        obj.pop("pos_scores", None)
        obj.pop("neg_scores", None)
        if scores is not None:
            obj["pos_scores"], obj["neg_scores"] = scores[i][:len(rec.pos)], scores[i][len(rec.pos):]
        report.lines += 1
        yield json.dumps(obj, ensure_ascii=False)
