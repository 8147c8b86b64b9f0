"""Write encodings where search engines and vector stores read them.

``.jsonl`` — one object per text: ``id``, ``dense`` (list), ``sparse`` ({key: weight}) and ``colbert`` (list of token
vectors). Sparse keys are token ids as strings (``"1234"``, the default: valid field names for Elasticsearch /
OpenSearch ``rank_features``) or the tokenizer's token strings (``sparse_keys="tokens"``, for reading).

``.npz`` — arrays (``numpy.load``): ``ids`` [n]; ``dense`` float32 [n, d]; the sparse head as CSR
(``sparse_indptr`` int64 [n+1], ``sparse_indices`` int32 token ids, ``sparse_data`` float32, ``sparse_shape`` =
(n, vocabulary size): ``scipy.sparse.csr_matrix((data, indices, indptr), shape)``); multi-vector as one matrix
``colbert`` [Σ tokens, d_c] (float16 by default) with ``colbert_offsets`` int64 [n+1] (text i's vectors are rows
``offsets[i]:offsets[i+1]``).
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from ..files import write_file_atomically


def sparse_csr(rows: Sequence[Mapping[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of {token_id: weight} rows, ids ascending within a row."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indices, data = [], []
    for i, row in enumerate(rows):
        ids = sorted(row)
        indices.extend(ids)
        data.extend(row[t] for t in ids)
        indptr[i + 1] = indptr[i] + len(ids)
    return indptr, np.asarray(indices, dtype=np.int32), np.asarray(data, dtype=np.float32)


def stacked_vectors(matrices: Sequence[np.ndarray], dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    """(all rows stacked in ``dtype``, offsets [n+1]) of per-text [tokens, d] matrices."""
    offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([m.shape[0] for m in matrices])
    width = matrices[0].shape[1] if matrices else 0
    stacked = np.concatenate(matrices, axis=0) if matrices else np.zeros((0, width))
    return stacked.astype(dtype), offsets


def write_npz(path: str, ids: Sequence[str], out: Mapping[str, object], vocab_size: int,
              colbert_dtype: str = "float16") -> None:
    arrays: dict[str, np.ndarray] = {"ids": np.asarray(ids)}
    if "dense" in out:
        arrays["dense"] = np.asarray(out["dense"], dtype=np.float32)
    if "sparse" in out:
        indptr, indices, data = sparse_csr(out["sparse"])  # type: ignore[arg-type]
        arrays.update(sparse_indptr=indptr, sparse_indices=indices, sparse_data=data,
                      sparse_shape=np.asarray([len(ids), vocab_size], dtype=np.int64))
    if "colbert" in out:
        arrays["colbert"], arrays["colbert_offsets"] = stacked_vectors(out["colbert"], colbert_dtype)  # type: ignore
    write_file_atomically(path, lambda f: np.savez(f, **arrays), binary=True)


def write_jsonl(path: str, ids: Sequence[str], out: Mapping[str, object], token_of=None) -> None:
    """``token_of``: id → token string for ``sparse_keys="tokens"`` (None: ids)."""

    def write(f) -> None:
        for i, text_id in enumerate(ids):
            row: dict = {"id": text_id}
            if "dense" in out:
                row["dense"] = out["dense"][i].tolist()  # type: ignore[index]
            if "sparse" in out:
                weights = out["sparse"][i]  # type: ignore[index]
                row["sparse"] = {(token_of(k) if token_of else str(k)): v for k, v in weights.items()}
            if "colbert" in out:
                row["colbert"] = out["colbert"][i].tolist()  # type: ignore[index]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    write_file_atomically(path, write)
