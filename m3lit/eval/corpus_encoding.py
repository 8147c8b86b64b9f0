"""Encode texts for retrieval with any encoder exposing ``encode(texts, batch_size, max_length, return_*)``.

Texts are sorted by length and grouped into batches under a token budget (``rows × longest ≤ max_tokens``),
so short texts go in large batches and long ones in small batches with little padding. Outputs are stored
compactly: dense float32 (n, d), sparse as a CSR matrix (n, vocab), multi-vector as fp16 token vectors.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..inference.mcls import mcls_truncated
from ..model.defaults import HEADS

log = logging.getLogger(__name__)



class ColbertStore:
    """Token vectors of n texts, concatenated: ``vectors`` fp16 (T, d_c), text i = rows offsets[i]:offsets[i+1]."""

    def __init__(self, vectors: np.ndarray, offsets: np.ndarray):
        self.vectors = vectors
        self.offsets = offsets

    @classmethod
    def from_list(cls, arrays: Sequence[np.ndarray], dim: int | None = None) -> "ColbertStore":
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if dim is None:
            dim = next((a.shape[1] for a in arrays if a.ndim == 2), 0)
        vectors = np.empty((int(offsets[-1]), dim), dtype=np.float16)
        for i, a in enumerate(arrays):
            if lengths[i]:
                vectors[offsets[i]:offsets[i + 1]] = a
        return cls(vectors, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def padded(self, ids: np.ndarray, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Texts ``ids`` as float32 (n, L_max, d_c) zero-padded, and the (n, L_max) mask of real tokens."""
        ids = np.asarray(ids, dtype=np.int64)
        lengths = self.lengths[ids]
        width = max(int(lengths.max(initial=0)), 1)
        pos = np.arange(width)
        mask = pos[None, :] < lengths[:, None]
        rows = np.where(mask, self.offsets[ids][:, None] + pos[None, :], 0)
        out = torch.from_numpy(self.vectors[rows.reshape(-1)]).to(device=device, dtype=torch.float32)
        out = out.view(len(ids), width, self.dim)
        mask_t = torch.from_numpy(mask).to(device)
        return out * mask_t.unsqueeze(-1), mask_t


@dataclass
class EncodedTexts:
    """Encoder outputs of n texts (fields of heads not asked for are None)."""

    count: int
    dense: np.ndarray | None = None
    sparse: sp.csr_matrix | None = None
    colbert: ColbertStore | None = None
    truncated: int | None = None
    tokens: int | None = None
    max_length: int | None = None
    seconds: float = 0.0


def sparse_rows_to_csr(rows: Sequence[Mapping[Any, float]], width: int | None = None) -> sp.csr_matrix:
    """List of {token_id: weight} -> CSR (n, width); width defaults to the largest id + 1."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    for i, row in enumerate(rows):
        indptr[i + 1] = indptr[i] + len(row)
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    data = np.empty(int(indptr[-1]), dtype=np.float32)
    for i, row in enumerate(rows):
        if row:
            indices[indptr[i]:indptr[i + 1]] = np.fromiter((int(t) for t in row.keys()), np.int64, len(row))
            data[indptr[i]:indptr[i + 1]] = np.fromiter(row.values(), np.float32, len(row))
    needed = int(indices.max()) + 1 if len(indices) else 1
    matrix = sp.csr_matrix((data, indices, indptr), shape=(len(rows), max(width or 0, needed)))
    matrix.sum_duplicates()
    return matrix


def encoder_length_limit(encoder: Any) -> int | None:
    """Most tokens the encoder's position embeddings take (M3Embedder: ``model.encoder.config``), if known."""
    from ..model.positions import position_limit

    model = getattr(encoder, "model", None)
    for candidate in (getattr(model, "encoder", None), model):
        config = getattr(candidate, "config", None)
        if config is not None and not isinstance(config, dict):
            return position_limit(config)
    return None


def token_lengths(encoder: Any, texts: Sequence[str]) -> np.ndarray | None:
    """Token counts with special tokens and no truncation, when the encoder exposes a ``tokenizer``."""
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None or not texts:
        return None
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))


def token_budget_batches(lengths: np.ndarray, max_tokens: int, batch_size: int, pad_to: int = 8) -> list[np.ndarray]:
    """Indices sorted by decreasing length, cut into batches with ``rows × padded longest ≤ max_tokens``
    (at least one row, at most ``batch_size`` rows)."""
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        longest = -(-longest // pad_to) * pad_to
        rows = int(min(batch_size, max(1, max_tokens // longest)))
        batches.append(order[start:start + rows])
        start += rows
    return batches


class SharedTextCache:
    """Encodings of texts that occur more than once in one evaluation (e.g. the same English corpus in several
    cross-lingual datasets): kept from their first encoding until their last use, then dropped.

    ``uses`` counts each key over the whole evaluation; a key is (role, text), role naming the settings
    (e.g. "passage" or "query") that the text is encoded with.
    """

    def __init__(self, uses: Mapping[tuple[str, str], int]):
        self.remaining = {key: n for key, n in uses.items() if n > 1}
        self.store: dict[tuple[str, str], tuple] = {}
        self.hits = 0

    def get(self, key: tuple[str, str]) -> tuple | None:
        return self.store.get(key)

    def put(self, key: tuple[str, str], value: tuple) -> None:
        if key in self.remaining:
            self.store[key] = value

    def release(self, key: tuple[str, str]) -> None:
        if key in self.remaining:
            self.remaining[key] -= 1
            if self.remaining[key] <= 0:
                del self.remaining[key]
                self.store.pop(key, None)


def encode_texts(encoder: Any, texts: Sequence[str], heads: Sequence[str], max_length: int,
                 batch_size: int = 256, max_tokens: int = 16384, encode_kwargs: Mapping[str, Any] | None = None,
                 mcls_interval: int | None = None, desc: str = "texts", cache: SharedTextCache | None = None,
                 role: str = "passage") -> EncodedTexts:
    """Encode ``texts`` with the heads asked for; counts texts longer than ``max_length`` tokens.

    ``encode_kwargs`` are passed on to ``encoder.encode`` (e.g. ``mcls=True``); ``mcls_interval`` makes the
    truncation count use the MCLS sequence length. ``cache`` (with this call's ``role``) reuses encodings of
    texts shared between datasets.
    """
    unknown = set(heads) - set(HEADS)
    if unknown:
        raise ValueError(f"heads: unknown {sorted(unknown)}; expected a subset of {HEADS}")
    limit = encoder_length_limit(getattr(encoder, "embedder", encoder))
    if limit is not None and max_length > limit:
        log.warning("%s: max_length=%d exceeds the model's %d positions; using %d", desc, max_length, limit, limit)
        max_length = limit
    start_time = time.perf_counter()
    n = len(texts)
    rows: list[tuple | None] = [None] * n  # (dense, sparse, colbert) per text
    if cache is not None:
        for i, text in enumerate(texts):
            rows[i] = cache.get((role, text))
        cache.hits += sum(r is not None for r in rows)
    todo = np.array([i for i in range(n) if rows[i] is None], dtype=np.int64)
    lengths = token_lengths(encoder, texts)
    truncated = tokens = None
    if lengths is not None:
        if mcls_interval:
            truncated = int(sum(mcls_truncated(int(x) - 2, max_length, mcls_interval) for x in lengths))
        else:
            truncated = int(np.count_nonzero(lengths > max_length))
        tokens = int(np.minimum(lengths, max_length).sum())
        batches = [todo[b] for b in token_budget_batches(np.minimum(lengths[todo], max_length), max_tokens,
                                                          batch_size)]
    else:  # no tokenizer: characters as a length proxy, fixed batch size
        char_lengths = np.fromiter((len(texts[i]) for i in todo), dtype=np.int64, count=len(todo))
        batches = [todo[b] for b in token_budget_batches(char_lengths, np.iinfo(np.int64).max, batch_size)]
    kwargs = dict(encode_kwargs or {})
    for b, idx in enumerate(batches):
        out = encoder.encode([texts[i] for i in idx], batch_size=len(idx), max_length=max_length,
                             return_dense="dense" in heads, return_sparse="sparse" in heads,
                             return_colbert="colbert" in heads, **kwargs)
        dense = np.asarray(out["dense"], dtype=np.float32).reshape(len(idx), -1) if "dense" in heads else None
        for j, i in enumerate(idx):
            rows[i] = (None if dense is None else dense[j],
                       out["sparse"][j] if "sparse" in heads else None,
                       np.asarray(out["colbert"][j], dtype=np.float16) if "colbert" in heads else None)
            if cache is not None:
                cache.put((role, texts[i]), rows[i])
        if (b + 1) % 50 == 0:
            log.info("encoded %d/%d batches of %s", b + 1, len(batches), desc)
    if cache is not None:
        for text in texts:
            cache.release((role, text))
    result = EncodedTexts(count=n, truncated=truncated, tokens=tokens, max_length=max_length)
    if "dense" in heads:
        result.dense = np.stack([r[0] for r in rows]) if n else np.zeros((0, 0), np.float32)
    if "sparse" in heads:
        tokenizer = getattr(encoder, "tokenizer", None)
        result.sparse = sparse_rows_to_csr([r[1] for r in rows], len(tokenizer) if tokenizer is not None else None)
    if "colbert" in heads:
        arrays = [r[2] for r in rows]
        dim = next((a.shape[1] for a in arrays if a.ndim == 2 and a.shape[0]), 0)
        result.colbert = ColbertStore.from_list(arrays, dim)
    result.seconds = time.perf_counter() - start_time
    return result
