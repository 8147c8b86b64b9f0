"""Exact top-k search for each head, and scoring of given (query, candidate) pairs.

Scores (FlagEmbedding semantics): dense ``q · p``; sparse ``Σ_{t ∈ q∩p} w_q(t) w_p(t)``;
multi-vector ``(Σ_i max_j q_i · p_j) / len(q)``.
- dense: brute force in chunks of documents (torch matmul, or faiss ``IndexFlatIP``), merged top-k;
- sparse: CSR product ``Q · Dᵀ`` per chunk of queries; only documents sharing a token are candidates;
- multi-vector: exhaustive over length-sorted chunks of documents (fp16 storage, float32 compute), or as
  re-ranking of given candidates (e.g. the dense top-k) for large corpora.
A :class:`Ranking` holds (n_queries, k) document indices best first; empty slots are -1 with score -inf.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .corpus_encoding import ColbertStore, EncodedTexts


@dataclass
class Ranking:
    """Top documents per query, best first (ties by lower document index; at the k-th place ties are cut
    arbitrarily)."""

    indices: np.ndarray  # int64 (n_queries, k); -1 = empty
    scores: np.ndarray   # float32 (n_queries, k); -inf where empty
    table: np.ndarray | None = None  # optional full score matrix (n_queries, n_docs), reused by hybrids

    @property
    def depth(self) -> int:
        return self.indices.shape[1]


def sort_ranking(indices: np.ndarray, scores: np.ndarray, k: int | None = None) -> Ranking:
    """Order each row by decreasing score, ties by increasing document index (deterministic); keep k."""
    scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((np.where(indices < 0, np.iinfo(np.int64).max, indices), -scores.astype(np.float64)),
                       axis=-1)
    indices = np.take_along_axis(indices, order, axis=1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k]
    return Ranking(np.where(np.isneginf(scores), -1, indices).astype(np.int64), scores)


class _TopK:
    """Running top-k of score chunks (torch), per row."""

    def __init__(self, rows: int, k: int, device: torch.device):
        self.k = k
        self.scores = torch.full((rows, 0), -torch.inf, device=device)
        self.indices = torch.zeros((rows, 0), dtype=torch.long, device=device)

    def add(self, scores: torch.Tensor, offset: int | torch.Tensor) -> None:
        """``scores`` (rows, c) for documents ``offset + 0..c-1`` (or the index tensor ``offset`` of shape (c,))."""
        c = scores.shape[1]
        idx = offset if isinstance(offset, torch.Tensor) else torch.arange(offset, offset + c, device=scores.device)
        top = min(self.k, c)
        s, j = torch.topk(scores, top, dim=1)
        all_s = torch.cat([self.scores, s], dim=1)
        all_i = torch.cat([self.indices, idx[j]], dim=1)
        if all_s.shape[1] > self.k:
            s2, j2 = torch.topk(all_s, self.k, dim=1)
            all_s, all_i = s2, torch.gather(all_i, 1, j2)
        self.scores, self.indices = all_s, all_i

    def ranking(self) -> Ranking:
        return sort_ranking(self.indices.cpu().numpy(), self.scores.float().cpu().numpy(), self.k)


def dense_search(queries: np.ndarray, docs: np.ndarray, k: int, doc_chunk: int = 65536, query_chunk: int = 1024,
                 device: str | torch.device = "cpu", backend: str = "torch") -> Ranking:
    """Exact inner-product top-k of ``queries`` (nq, d) against ``docs`` (nd, d)."""
    if backend == "faiss":
        return _dense_search_faiss(queries, docs, k)
    if backend != "torch":
        raise ValueError(f"dense backend={backend!r}: expected 'torch' or 'faiss'")
    device = torch.device(device)
    doc_t = torch.from_numpy(np.ascontiguousarray(docs, dtype=np.float32))
    parts = []
    for qs in range(0, len(queries), query_chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[qs:qs + query_chunk], dtype=np.float32)).to(device)
        top = _TopK(len(q), k, device)
        for ds in range(0, len(docs), doc_chunk):
            top.add(q @ doc_t[ds:ds + doc_chunk].to(device).T, ds)
        parts.append(top.ranking())
    return _concat(parts, k)


def _dense_search_faiss(queries: np.ndarray, docs: np.ndarray, k: int) -> Ranking:
    import faiss

    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    scores, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(docs)))
    return sort_ranking(indices.astype(np.int64), scores, k)


def sparse_search(queries: sp.csr_matrix, docs: sp.csr_matrix, k: int, query_chunk: int = 256) -> Ranking:
    """Top-k lexical matching scores by a sparse product; documents sharing no token are not returned."""
    queries, docs = same_width(queries, docs)
    docs_t = docs.T.tocsc()
    indices = np.full((queries.shape[0], k), -1, dtype=np.int64)
    scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
    for qs in range(0, queries.shape[0], query_chunk):
        prod = (queries[qs:qs + query_chunk] @ docs_t).tocsr()
        for r in range(prod.shape[0]):
            lo, hi = prod.indptr[r], prod.indptr[r + 1]
            cols, vals = prod.indices[lo:hi], prod.data[lo:hi]
            keep = vals > 0
            cols, vals = cols[keep], vals[keep]
            if len(vals) > k:
                part = np.argpartition(-vals, k - 1)[:k]
                cols, vals = cols[part], vals[part]
            indices[qs + r, :len(cols)] = cols
            scores[qs + r, :len(vals)] = vals
    return sort_ranking(indices, scores, k)


MAX_TABLE_ENTRIES = 1 << 26  # keep a full (n_queries, n_docs) score matrix up to 64M entries (256 MB)


def colbert_search(queries: ColbertStore, docs: ColbertStore, k: int, doc_tokens_per_chunk: int = 8192,
                   query_tokens_per_chunk: int = 4096, device: str | torch.device = "cpu",
                   keep_table: bool | None = None) -> Ranking:
    """Exhaustive multi-vector top-k: each chunk of length-sorted documents is padded once and scored against
    chunks of query tokens, ``maxsim = max over doc tokens``, summed per query (index_add) / query length.

    ``keep_table`` (default: when it has at most MAX_TABLE_ENTRIES entries) keeps every score in
    ``Ranking.table`` so that hybrids look scores up instead of recomputing them."""
    device = torch.device(device)
    if keep_table is None:
        keep_table = len(queries) * len(docs) <= MAX_TABLE_ENTRIES
    table = np.zeros((len(queries), len(docs)), dtype=np.float32) if keep_table else None
    q_chunks = _query_token_chunks(queries, query_tokens_per_chunk)
    tops = [_TopK(len(ids), k, device) for ids in q_chunks]
    q_flat = []
    for ids in q_chunks:
        lo, hi = queries.offsets[ids[0]], queries.offsets[ids[-1] + 1]
        vecs = torch.from_numpy(queries.vectors[lo:hi]).to(device=device, dtype=torch.float32)
        seg = torch.from_numpy(np.repeat(np.arange(len(ids)), queries.lengths[ids])).to(device)
        q_len = torch.from_numpy(np.maximum(queries.lengths[ids], 1)).to(device=device, dtype=torch.float32)
        q_flat.append((vecs, seg, q_len))
    order = np.argsort(-docs.lengths, kind="stable")
    start = 0
    while start < len(order):
        width = max(int(docs.lengths[order[start]]), 1)
        rows = max(1, doc_tokens_per_chunk // width)
        chunk = order[start:start + rows]
        start += rows
        padded, mask = docs.padded(chunk, device)              # (c, L, d), (c, L)
        flat = padded.view(-1, padded.shape[-1])
        bias = torch.zeros(mask.shape, device=device).masked_fill_(~mask, -torch.inf)
        chunk_t = torch.from_numpy(chunk).to(device)
        for top, ids, (vecs, seg, q_len) in zip(tops, q_chunks, q_flat):
            sims = (vecs @ flat.T).view(len(vecs), len(chunk), -1) + bias  # (Tq, c, L)
            maxsim = sims.amax(dim=-1).nan_to_num_(neginf=0.0)            # empty docs score 0
            per_query = torch.zeros((len(q_len), len(chunk)), device=device).index_add_(0, seg, maxsim)
            per_query /= q_len[:, None]
            top.add(per_query, chunk_t)
            if table is not None:
                table[ids[:, None], chunk[None, :]] = per_query.cpu().numpy()
    ranking = _concat([t.ranking() for t in tops], k)
    ranking.table = table
    return ranking


def _query_token_chunks(queries: ColbertStore, max_tokens: int) -> list[np.ndarray]:
    chunks, current, tokens = [], [], 0
    for i, n in enumerate(queries.lengths.tolist()):
        if current and tokens + n > max_tokens:
            chunks.append(np.array(current))
            current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        chunks.append(np.array(current))
    return chunks


def candidates_scores(head: str, queries: EncodedTexts, docs: EncodedTexts, candidates: np.ndarray,
                      device: str | torch.device = "cpu", table: np.ndarray | None = None) -> np.ndarray:
    """Scores (nq, c) of ``head`` for query i against documents ``candidates[i]`` (-1 entries get -inf);
    looked up in ``table`` (nq, n_docs) when given."""
    valid = candidates >= 0
    safe = np.where(valid, candidates, 0)
    if table is not None:
        out = np.take_along_axis(table, safe, axis=1)
    elif head == "dense":
        out = np.zeros(candidates.shape, dtype=np.float32)
        for qs in range(0, len(safe), 64):
            out[qs:qs + 64] = np.einsum("qd,qcd->qc", queries.dense[qs:qs + 64], docs.dense[safe[qs:qs + 64]])
    elif head == "sparse":
        q, d = same_width(queries.sparse, docs.sparse)
        out = np.zeros(candidates.shape, dtype=np.float32)
        for i in range(candidates.shape[0]):
            out[i] = (d[safe[i]] @ q[i].T).toarray().ravel()
    elif head == "colbert":
        out = _colbert_candidates(queries.colbert, docs.colbert, candidates, torch.device(device))
    else:
        raise ValueError(f"head {head!r}: expected dense, sparse or colbert")
    return np.where(valid, out, -np.inf).astype(np.float32)


def _colbert_candidates(queries: ColbertStore, docs: ColbertStore, candidates: np.ndarray,
                        device: torch.device) -> np.ndarray:
    """Per query: the candidates' token vectors gathered flat (T, d_c) without padding, one GEMM (Lq, T),
    max per document by ``scatter_reduce(amax)`` over segment ids, sum over query tokens / Lq."""
    out = np.zeros(candidates.shape, dtype=np.float32)
    doc_lengths = docs.lengths
    for i in range(candidates.shape[0]):
        columns = np.flatnonzero(candidates[i] >= 0)  # -1 padding is skipped
        if not len(columns):
            continue
        cand = candidates[i, columns]
        q = torch.from_numpy(queries.vectors[queries.offsets[i]:queries.offsets[i + 1]]).to(device, torch.float32)
        lengths = doc_lengths[cand]
        starts = docs.offsets[cand]
        seg = np.repeat(np.arange(len(lengths)), lengths)
        rows = np.arange(len(seg)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
        flat = torch.from_numpy(docs.vectors[rows]).to(device, torch.float32)      # (T, d_c)
        sims = q @ flat.T                                                            # (Lq, T)
        seg_t = torch.from_numpy(seg).to(device).expand(len(q), -1)
        maxsim = torch.full((len(q), len(lengths)), -torch.inf, device=device)
        maxsim.scatter_reduce_(1, seg_t, sims, reduce="amax", include_self=True)
        maxsim = maxsim.nan_to_num_(neginf=0.0)                                      # empty documents score 0
        out[i, columns] = (maxsim.sum(dim=0) / max(len(q), 1)).cpu().numpy()
    return out


def rerank(head: str, queries: EncodedTexts, docs: EncodedTexts, candidates: np.ndarray, k: int,
           device: str | torch.device = "cpu") -> Ranking:
    """Rank ``candidates`` (nq, c) by ``head``'s scores, keep k."""
    return sort_ranking(candidates, candidates_scores(head, queries, docs, candidates, device), k)


def same_width(a: sp.csr_matrix, b: sp.csr_matrix) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    width = max(a.shape[1], b.shape[1])
    if a.shape[1] != width:
        a = sp.csr_matrix((a.data, a.indices, a.indptr), shape=(a.shape[0], width))
    if b.shape[1] != width:
        b = sp.csr_matrix((b.data, b.indices, b.indptr), shape=(b.shape[0], width))
    return a, b


def _concat(parts: list[Ranking], k: int) -> Ranking:
    if not parts:
        return Ranking(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
    width = max(p.depth for p in parts)
    idx = [np.pad(p.indices, ((0, 0), (0, width - p.depth)), constant_values=-1) for p in parts]
    sc = [np.pad(p.scores, ((0, 0), (0, width - p.depth)), constant_values=-np.inf) for p in parts]
    return Ranking(np.concatenate(idx), np.concatenate(sc))
