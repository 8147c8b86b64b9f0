"""Evaluate an m3lit model with MTEB (2.x) on retrieval tasks, per head and hybrid.

- :class:`M3DenseEncoder`: the dense head as an MTEB ``EncoderProtocol`` (``encode`` + dot-product
  ``similarity``): MTEB runs its own exact search, and every other MTEB task type works too.
- :class:`M3MTEBModel`: an MTEB ``SearchProtocol`` for one mode: ``dense``, ``sparse``, ``colbert``, a hybrid of
  heads joined by ``+`` (``dense+sparse``) or ``all`` (every trained head). The whole corpus is scored for each
  query with m3lit's scoring (:mod:`m3lit.eval.search`): a single head by its exact top-k search (sparse returns
  only documents sharing a weighted token, as in m3lit), a hybrid by ``s = Σ_h w_h s_h`` (m3lit's weights,
  default dense 1, sparse 0.3, colbert 1) over every document; with ``candidate_depth`` a hybrid re-ranks the
  union of each head's top ``candidate_depth`` instead (m3lit's ``evaluate_beir`` protocol). For reranking tasks
  (``top_ranked``) the given candidates are scored the same way.
- :func:`m3lit_mteb_models`: one model per mode; :func:`local_retrieval_task`: an MTEB retrieval task read from a
  local BEIR folder (nothing is downloaded).

Texts are batched as :func:`m3lit.eval.evaluator.evaluate_beir` batches them (``batch_size`` rows and
``max_tokens`` tokens at most, longest first); MTEB's ``encode_kwargs["batch_size"]`` is not used. Ties in score
are ordered by MTEB (pytrec_eval: decreasing document id), m3lit orders them by corpus position.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..eval.beir import load_beir
from ..eval.corpus_encoding import ColbertStore, EncodedTexts, encode_texts
from ..eval.hybrid import DEFAULT_HYBRIDS, hybrid_search, hybrids_from_names
from ..eval.search import (
    Ranking,
    candidates_scores,
    colbert_search,
    dense_search,
    same_width,
    sort_ranking,
    sparse_search,
)
from ..model.defaults import HEADS
from .embedder import M3Embedder

__all__ = ["M3DenseEncoder", "M3MTEBModel", "local_retrieval_task", "m3lit_mteb_models", "mode_weights"]

_MODEL_TYPES = {"dense": "dense", "sparse": "sparse", "colbert": "late-interaction"}


def mode_weights(mode: str, weights: Mapping[str, float] | None = None,
                 heads: Sequence[str] = HEADS) -> dict[str, float]:
    """{head: weight} of a mode: a head alone has weight 1; a hybrid (``a+b``, ``all`` = every head in ``heads``)
    takes m3lit's default weights overridden by ``weights``."""
    if mode in HEADS:
        return {mode: 1.0}
    try:
        hybrids = hybrids_from_names([mode], weights, heads)
    except ValueError as err:
        raise ValueError(f"mode {mode!r}: expected one of {HEADS}, heads joined by '+', or 'all' ({err})") from None
    if mode not in hybrids:
        raise ValueError(f"mode {mode!r}: needs at least two trained heads (this model has {list(heads)})")
    return hybrids[mode]


def _load(model: str | os.PathLike | M3Embedder, device: str | None) -> M3Embedder:
    if isinstance(model, (str, os.PathLike)):
        return M3Embedder.from_pretrained(os.fspath(model), device=device)
    return model


def _default_name(model: Any) -> str:
    """The model folder's name, or ``m3-model`` for an embedder."""
    return os.path.basename(os.path.normpath(os.fspath(model))) if isinstance(model, (str, os.PathLike)) \
        else "m3-model"


def _fingerprint(embedder: M3Embedder) -> str:
    """12 hex digits from the parameters' names, shapes and sums: a revision that changes with the weights, so
    that MTEB's result cache never hands one checkpoint's results to another."""
    digest = hashlib.sha256(str(len(embedder.tokenizer)).encode())
    with torch.no_grad():
        for name, p in embedder.model.state_dict().items():
            x = p.detach().double()
            digest.update(f"{name}{tuple(p.shape)}{x.sum().item():.10e}{x.abs().sum().item():.10e}".encode())
    return digest.hexdigest()[:12]


def _texts(dataset: Any, task_metadata: Any, prompt_type: Any) -> list[str]:
    """The texts MTEB's own wrappers give a model: a document's title and text joined, a query with its
    instruction."""
    from mteb._create_dataloaders import create_dataloader

    loader = create_dataloader(dataset, task_metadata=task_metadata, prompt_type=prompt_type, batch_size=1024)
    return [text for batch in loader for text in batch["text"]]


class _M3Base:
    """Shared settings: the embedder, lengths, batching and the MTEB ``ModelMeta``."""

    def __init__(self, model: str | os.PathLike | M3Embedder, mode: str, weights: Mapping[str, float], *,
                 batch_size: int, max_tokens: int, max_length: int, query_max_length: int | None,
                 device: str | None, name: str | None, revision: str | None,
                 experiment: Mapping[str, Any] | None = None):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        self.embedder = _load(model, device)
        self.mode, self.weights = mode, dict(weights)
        self.embedder.check_heads([h for h, w in self.weights.items() if w != 0])
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.max_length = max_length
        self.query_max_length = query_max_length or max_length
        self.device = str(self.embedder.device)
        name = name or _default_name(model)
        kinds = sorted({_MODEL_TYPES[h] for h in self.weights})
        similarity = {"dense": "dot", "sparse": "dot", "colbert": "MaxSim"}.get(mode, ScoringFunction.CUSTOM)
        self.mteb_model_meta = ModelMeta(
            loader=None, name=name if "/" in name else f"m3lit/{name}",
            revision=revision or _fingerprint(self.embedder), release_date=None, languages=None,
            n_parameters=sum(p.numel() for p in self.embedder.model.parameters()), memory_usage_mb=None,
            max_tokens=self.max_length, embed_dim=self.embedder.model.hidden_size if mode == "dense" else None,
            license=None, open_weights=True, public_training_code=None, public_training_data=None,
            framework=["PyTorch"], similarity_fn_name=similarity, use_instructions=False, training_datasets=None,
            model_type=kinds if len(kinds) == 1 else ["hybrid"],
            experiment_kwargs={"mode": mode, **(experiment or {})})

    def _encode(self, texts: Sequence[str], heads: Sequence[str], query: bool) -> EncodedTexts:
        return encode_texts(self.embedder, list(texts), list(heads),
                            self.query_max_length if query else self.max_length, self.batch_size, self.max_tokens,
                            desc="queries" if query else "corpus")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mteb_model_meta.name!r}, mode={self.mode!r}, weights={self.weights})"


class M3DenseEncoder(_M3Base):
    """The dense head as an MTEB encoder: normalised CLS vectors, scored by dot product; MTEB searches."""

    def __init__(self, model: str | os.PathLike | M3Embedder, *, batch_size: int = 256, max_tokens: int = 16384,
                 max_length: int = 512, query_max_length: int | None = None, device: str | None = None,
                 name: str | None = None, revision: str | None = None):
        super().__init__(model, "dense", {"dense": 1.0}, batch_size=batch_size, max_tokens=max_tokens,
                         max_length=max_length, query_max_length=query_max_length, device=device, name=name,
                         revision=revision)

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None,
               **kwargs: Any) -> np.ndarray:
        """(n, d) float32 dense vectors of a dataloader's texts (queries truncated at ``query_max_length``)."""
        from mteb.types import PromptType

        texts = [text for batch in inputs for text in batch["text"]]
        return self._encode(texts, ["dense"], query=prompt_type == PromptType.query).dense

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        from mteb.similarity_functions import dot_score

        return dot_score(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        from mteb.similarity_functions import pairwise_dot_score

        return pairwise_dot_score(embeddings1, embeddings2)


class M3MTEBModel(_M3Base):
    """One retrieval mode of an m3lit model as an MTEB search model (``index`` + ``search``).

    model: a BGE-M3-layout folder or an :class:`M3Embedder`; mode: ``dense``, ``sparse``, ``colbert``, heads
    joined by ``+`` or ``all``; weights: hybrid weights by head (m3lit's defaults otherwise); candidate_depth:
    None scores every document for a hybrid, an int re-ranks the union of each head's top ``candidate_depth``
    (m3lit's ``evaluate_beir`` protocol, for corpora too large to score whole); query_chunk: queries scored
    together by an exhaustive hybrid (memory about query_chunk × corpus size × 24 bytes).
    """

    def __init__(self, model: str | os.PathLike | M3Embedder, mode: str = "dense",
                 weights: Mapping[str, float] | None = None, *, batch_size: int = 256, max_tokens: int = 16384,
                 max_length: int = 512, query_max_length: int | None = None, candidate_depth: int | None = None,
                 query_chunk: int = 256, device: str | None = None, name: str | None = None,
                 revision: str | None = None):
        embedder = _load(model, device)
        chosen = mode_weights(mode, weights, embedder.trained_heads)
        experiment = {} if mode in HEADS else {"weights": chosen}
        if candidate_depth is not None and mode not in HEADS:
            experiment["candidate_depth"] = candidate_depth
        super().__init__(embedder, mode, chosen, batch_size=batch_size, max_tokens=max_tokens,
                         max_length=max_length, query_max_length=query_max_length, device=None,
                         name=name or _default_name(model), revision=revision, experiment=experiment)
        self.heads = [h for h in HEADS if self.weights.get(h, 0) != 0]
        self.candidate_depth, self.query_chunk = candidate_depth, query_chunk
        self._docs: EncodedTexts | None = None
        self._doc_ids: list[str] = []

    # ------------------------------------------------------------------ SearchProtocol
    def index(self, corpus: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, encode_kwargs: Any,
              num_proc: int | None = None, **kwargs: Any) -> None:
        """Encode the corpus with the heads of this mode."""
        from mteb.types import PromptType

        self._doc_ids = [str(i) for i in corpus["id"]]
        self._docs = self._encode(_texts(corpus, task_metadata, PromptType.document), self.heads, query=False)

    def search(self, queries: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, top_k: int,
               encode_kwargs: Any, top_ranked: Mapping[str, Sequence[str]] | None = None,
               num_proc: int | None = None, **kwargs: Any) -> dict[str, dict[str, float]]:
        """{query id: {doc id: score}}: the ``top_k`` best documents of each query (of its ``top_ranked``
        candidates when given)."""
        from mteb.types import PromptType

        if self._docs is None:
            raise ValueError("M3MTEBModel.search: call index(corpus) first")
        query_ids = [str(i) for i in queries["id"]]
        encoded = self._encode(_texts(queries, task_metadata, PromptType.query), self.heads, query=True)
        ranking = self.rank(encoded, top_k, None if top_ranked is None else [top_ranked.get(q, []) for q in query_ids])
        return {qid: {self._doc_ids[j]: float(s) for j, s in zip(ranking.indices[i], ranking.scores[i]) if j >= 0}
                for i, qid in enumerate(query_ids)}

    # ------------------------------------------------------------------ scoring
    def rank(self, queries: EncodedTexts, k: int, candidates: Sequence[Sequence[str]] | None = None) -> Ranking:
        """Top ``k`` documents of each encoded query (among ``candidates``, doc ids per query, when given)."""
        docs, k = self._docs, max(1, min(k, len(self._doc_ids)))
        if candidates is not None:
            position = {d: j for j, d in enumerate(self._doc_ids)}
            rows = [[position[d] for d in c if d in position] for c in candidates]
            table = np.full((len(rows), max(map(len, rows), default=0) or 1), -1, dtype=np.int64)
            for i, row in enumerate(rows):
                table[i, :len(row)] = row
            return sort_ranking(table, self._weighted(
                [candidates_scores(h, queries, docs, table, self.device) for h in self.heads]), k)
        if len(self.heads) == 1:
            return self._head_search(self.heads[0], queries, docs, k)
        if self.candidate_depth is not None:
            depth = self.candidate_depth
            rankings = {h: self._head_search(h, queries, docs, max(k, depth)) for h in self.heads}
            return hybrid_search(rankings, self.weights, queries, docs, k, depth, self.device)
        parts = []
        for lo in range(0, queries.count, self.query_chunk):
            chunk = _rows(queries, lo, min(lo + self.query_chunk, queries.count))
            total = self._weighted([self._score_table(h, chunk, docs) for h in self.heads])
            indices = np.broadcast_to(np.arange(len(self._doc_ids), dtype=np.int64), total.shape).copy()
            parts.append(sort_ranking(indices, total, k))
        return Ranking(np.concatenate([p.indices for p in parts]), np.concatenate([p.scores for p in parts]))

    def _weighted(self, scores: list[np.ndarray]) -> np.ndarray:
        total = np.zeros(scores[0].shape, dtype=np.float64)
        for h, s in zip(self.heads, scores):
            total += self.weights[h] * s
        return total

    def _head_search(self, head: str, queries: EncodedTexts, docs: EncodedTexts, k: int) -> Ranking:
        if head == "dense":
            return dense_search(queries.dense, docs.dense, k, device=self.device)
        if head == "sparse":
            return sparse_search(queries.sparse, docs.sparse, k)
        return colbert_search(queries.colbert, docs.colbert, k, device=self.device, keep_table=False)

    def _score_table(self, head: str, queries: EncodedTexts, docs: EncodedTexts) -> np.ndarray:
        """(n_queries, n_docs) float32 scores of ``head`` against every document."""
        if head == "dense":
            q = torch.from_numpy(np.ascontiguousarray(queries.dense)).to(self.device)
            return (q @ torch.from_numpy(docs.dense).to(self.device).T).cpu().numpy()
        if head == "sparse":
            q, d = same_width(queries.sparse, docs.sparse)
            return (q @ d.T).toarray().astype(np.float32)
        return colbert_search(queries.colbert, docs.colbert, 1, device=self.device, keep_table=True).table


def _rows(encoded: EncodedTexts, lo: int, hi: int) -> EncodedTexts:
    """Texts ``lo:hi`` of ``encoded``."""
    out = EncodedTexts(count=hi - lo)
    if encoded.dense is not None:
        out.dense = encoded.dense[lo:hi]
    if encoded.sparse is not None:
        out.sparse = encoded.sparse[lo:hi]
    if encoded.colbert is not None:
        offsets = encoded.colbert.offsets
        out.colbert = ColbertStore(encoded.colbert.vectors[offsets[lo]:offsets[hi]], offsets[lo:hi + 1] - offsets[lo])
    return out


def m3lit_mteb_models(model: str | os.PathLike | M3Embedder, modes: Sequence[str] | None = None,
                      weights: Mapping[str, float] | None = None, device: str | None = None,
                      **options: Any) -> dict[str, M3DenseEncoder | M3MTEBModel]:
    """{mode: MTEB model} sharing one loaded model. ``modes`` defaults to every trained head and the default
    hybrids (``dense+sparse``, ``all``) whose heads are trained; ``dense`` is an :class:`M3DenseEncoder` (MTEB's
    own search), the others :class:`M3MTEBModel`. ``options``: their keyword arguments."""
    embedder = _load(model, device)
    trained = embedder.trained_heads
    if modes is None:
        modes = [h for h in HEADS if h in trained]
        modes += [n for n, w in DEFAULT_HYBRIDS.items() if (n == "all" and len(trained) > 1) or
                  (n != "all" and set(w) <= set(trained))]
    options["name"] = options.get("name") or _default_name(model)
    if options.get("revision") is None:
        options["revision"] = _fingerprint(embedder)
    dense_options = {k: v for k, v in options.items() if k not in ("candidate_depth", "query_chunk")}
    return {mode: M3DenseEncoder(embedder, **dense_options) if mode == "dense"
            else M3MTEBModel(embedder, mode, weights, **options) for mode in modes}


def local_retrieval_task(beir_dir: str | os.PathLike, name: str | None = None, split: str | None = None,
                         eval_langs: Sequence[str] = ("eng-Latn",), main_score: str = "ndcg_at_10",
                         k_values: Sequence[int] | None = None) -> Any:
    """An MTEB retrieval task (``AbsTaskRetrieval``) over a local BEIR folder (corpus.jsonl, queries.jsonl,
    qrels/<split>.tsv), read with m3lit's BEIR loader: a document is ``title + " " + text``, the queries are the
    judged ones. ``split`` defaults to ``test``, else ``dev``; ``name`` to ``Local-<folder name>``."""
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    folder = os.path.abspath(os.fspath(beir_dir))
    if split is None:
        split = "test" if os.path.isfile(os.path.join(folder, "qrels", "test.tsv")) else "dev"
    name = name or f"Local-{os.path.basename(folder)}"
    metadata = TaskMetadata(
        name=name, description=f"Local BEIR folder {folder} (split {split})", type="Retrieval",
        category="t2t", modalities=["text"], eval_splits=[split], eval_langs=list(eval_langs),
        main_score=main_score, dataset={"path": folder, "revision": "local"}, reference=None,
        bibtex_citation="")

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        from datasets import Dataset

        if self.data_loaded:
            return
        self.dataset = {"default": {}}
        for s in self.metadata.eval_splits:
            data = load_beir(folder, split=s)
            self.dataset["default"][s] = {
                "corpus": Dataset.from_dict({"id": list(data.corpus), "text": list(data.corpus.values())}),
                "queries": Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())}),
                "relevant_docs": {q: dict(j) for q, j in data.qrels.items()},
                "top_ranked": None,
            }
        self.data_loaded = True

    attrs: dict[str, Any] = {"metadata": metadata, "load_data": load_data, "__doc__": metadata.description}
    if k_values is not None:
        attrs["k_values"] = tuple(k_values)
    cls = type("".join(c if c.isalnum() else "_" for c in name), (AbsTaskRetrieval,), attrs)
    return cls()
