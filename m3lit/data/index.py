"""Byte-offset index of a jsonl(.gz) training file: per line its byte span and a few numbers, never the texts.

The first pass parses and validates every line (errors name file, line and field) and stores, per valid line:
byte start/length, 1-based line number, query hash (no query twice in one global batch), query length and the
longest positive and longest negative in characters, number of positives and negatives, whether it carries teacher scores, its
``language`` field. ``.gz`` files are decompressed once into the cache so that lines can be read by offset, and
table sources (parquet, arrow, saved ``datasets``, hub names: :mod:`m3lit.data.tables`) are written there as jsonl.
The index is cached as ``<cache_dir>/index/<key>.npz``, keyed by path, size and modification time.
Memory: about 45 bytes per line (1M lines ≈ 45 MB).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zlib
from array import array
from dataclasses import dataclass

import numpy as np

from .errors import BadLineError, DataError
from .records import TrainRecord, parse_record
from .tables import is_table_source, source_key, write_jsonl

INDEX_VERSION = 3  # 3: empty texts and non-finite scores are invalid
MAX_REPORTED_BAD_LINES = 50


@dataclass
class FileIndex:
    """Index of one training file. Arrays have one entry per valid line."""

    path: str  # the file as configured
    text_path: str  # plain jsonl the offsets refer to (the decompressed cache copy for .gz)
    key: str  # cache key (path, size, mtime)
    start: np.ndarray  # int64 byte offset
    nbytes: np.ndarray  # int32 byte length of the line
    line_no: np.ndarray  # int64, 1-based
    query_hash: np.ndarray  # uint64
    query_chars: np.ndarray  # int32
    pos_chars: np.ndarray  # int32, longest positive
    neg_chars: np.ndarray  # int32, longest negative (0 without negatives)
    n_pos: np.ndarray  # int32
    n_neg: np.ndarray  # int32
    has_scores: np.ndarray  # bool
    language: np.ndarray  # int16 index into ``languages``, -1 when the line has no language field
    languages: list[str]
    n_bad: int  # invalid lines (kept out of the arrays)
    bad_lines: list[tuple[int, str, str]]  # (line, field, message), the first MAX_REPORTED_BAD_LINES
    unit: str = "line"  # how errors name a line: "line" (jsonl) or "row" (a table source: row = line - 1)

    def __len__(self) -> int:
        return int(self.start.shape[0])


def query_hash(query: str) -> int:
    return int.from_bytes(hashlib.blake2b(query.encode("utf-8"), digest_size=8).digest(), "little")


def file_key(path: str) -> str:
    if is_table_source(path):
        return source_key(path, INDEX_VERSION)
    st = os.stat(path)
    ident = f"v{INDEX_VERSION}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _atomic_target(final_path: str):
    os.makedirs(os.path.dirname(final_path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final_path), prefix=".tmp-")
    return fd, tmp


def _scan(path: str, stream, copy_to) -> dict:
    """Parse every line of ``stream`` (binary); optionally copy the raw bytes to ``copy_to``."""
    cols = {k: array(t) for k, t in [
        ("start", "q"), ("nbytes", "l"), ("line_no", "q"), ("query_hash", "Q"), ("query_chars", "l"),
        ("pos_chars", "l"), ("neg_chars", "l"), ("n_pos", "l"), ("n_neg", "l"), ("has_scores", "b"), ("language", "h"),
    ]}
    languages: dict[str, int] = {}
    bad: list[tuple[int, str, str]] = []
    n_bad = 0
    offset = 0
    for line_no, raw in enumerate(stream, start=1):
        if copy_to is not None:
            copy_to.write(raw)
        size = len(raw)
        if raw.strip():
            try:
                rec: TrainRecord = parse_record(raw, path, line_no)
            except BadLineError as err:
                n_bad += 1
                if len(bad) < MAX_REPORTED_BAD_LINES:
                    bad.append((err.line, err.field, err.message))
            else:
                cols["start"].append(offset)
                cols["nbytes"].append(size)
                cols["line_no"].append(line_no)
                cols["query_hash"].append(query_hash(rec.query))
                cols["query_chars"].append(len(rec.query))
                cols["pos_chars"].append(max(map(len, rec.pos)))
                cols["neg_chars"].append(max(map(len, rec.neg), default=0))
                cols["n_pos"].append(len(rec.pos))
                cols["n_neg"].append(len(rec.neg))
                cols["has_scores"].append(rec.has_scores)
                lang = -1 if rec.language is None else languages.setdefault(rec.language, len(languages))
                cols["language"].append(lang)
        offset += size
    dtypes = dict(start=np.int64, nbytes=np.int32, line_no=np.int64, query_hash=np.uint64, query_chars=np.int32,
                  pos_chars=np.int32, neg_chars=np.int32, n_pos=np.int32, n_neg=np.int32, has_scores=np.bool_, language=np.int16)
    out = {k: np.frombuffer(v, dtype=np.dtype(v.typecode)).astype(dtypes[k]) if len(v) else np.zeros(0, dtypes[k])
           for k, v in cols.items()}
    out["languages"] = sorted(languages, key=languages.get)
    out["n_bad"] = n_bad
    out["bad_lines"] = bad
    return out


def build_file_index(path: str, cache_dir: str) -> FileIndex:
    """Load the cached index of ``path`` or build (and cache) it."""
    key = file_key(path)
    index_path = os.path.join(cache_dir, "index", key + ".npz")
    is_gz, is_table = path.endswith(".gz"), is_table_source(path)
    text_path = os.path.join(cache_dir, "index", key + ".jsonl") if is_gz or is_table else path
    if os.path.exists(index_path) and os.path.exists(text_path):
        return _load(index_path, path, text_path, key)
    if is_table:
        fd, tmp_text = _atomic_target(text_path)
        try:
            with os.fdopen(fd, "wb") as copy_to:
                write_jsonl(path, copy_to)
            with open(tmp_text, "rb") as stream:
                cols = _scan(path, stream, None)
            os.replace(tmp_text, text_path)
        finally:
            if os.path.exists(tmp_text):
                os.remove(tmp_text)
    elif is_gz:
        fd, tmp_text = _atomic_target(text_path)
        try:
            with os.fdopen(fd, "wb") as copy_to, gzip.open(path, "rb") as stream:
                cols = _scan(path, stream, copy_to)
            os.replace(tmp_text, text_path)
        except (EOFError, OSError, zlib.error) as err:
            raise DataError(f"{path}: cannot be read as gzip ({type(err).__name__}: {err}); the file is truncated, "
                            "corrupt or not gzip-compressed (rename it without .gz if it is plain jsonl)") from None
        finally:
            if os.path.exists(tmp_text):
                os.remove(tmp_text)
    else:
        with open(path, "rb") as stream:
            cols = _scan(path, stream, None)
    meta = {"languages": cols.pop("languages"), "n_bad": cols.pop("n_bad"), "bad_lines": cols.pop("bad_lines"),
            "unit": "row" if is_table else "line"}
    fd, tmp = _atomic_target(index_path)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **cols)
    os.replace(tmp, index_path)
    return _make(cols, meta, path, text_path, key)


def _load(index_path: str, path: str, text_path: str, key: str) -> FileIndex:
    with np.load(index_path, allow_pickle=False) as z:
        cols = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    return _make(cols, meta, path, text_path, key)


def _make(cols: dict, meta: dict, path: str, text_path: str, key: str) -> FileIndex:
    return FileIndex(
        path=path, text_path=text_path, key=key, **cols,
        languages=list(meta["languages"]), n_bad=int(meta["n_bad"]),
        bad_lines=[tuple(b) for b in meta["bad_lines"]], unit=meta.get("unit", "line"),
    )
