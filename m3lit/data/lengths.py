"""Token lengths of each line's longest positive and longest negative, used to pick its length bucket.

Modes:
- ``auto`` (default): ``exact`` for files of at most ``AUTO_EXACT_MAX_LINES`` lines, else ``sample``.
- ``sample`` (O(sample) tokenizer calls): per file, tokenize the passages (their first ``SAMPLE_CHARS``
  characters) of up to ``SAMPLE_LINES`` lines,
  fit ``tokens ≈ ratio · chars + n_special`` and apply it to every line's longest positive/negative (characters).
- ``exact``: tokenize every passage of every line once (slow on large corpora); cached per tokenizer.
Lengths include the special tokens and are not yet capped at ``passage_max_len``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from .errors import DataConfigError
from .index import FileIndex
from .reader import LineReader

AUTO_EXACT_MAX_LINES = 50_000
SAMPLE_LINES = 128
SAMPLE_CHARS = 1000  # only the head of each sampled passage is tokenized
LENGTH_MODES = ("auto", "sample", "exact")


def tokenizer_fingerprint(tokenizer) -> str:
    """Stable id of a tokenizer (its full serialized form when it has a fast backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    ident = backend.to_str() if backend is not None else f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}"
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def _n_special(tokenizer) -> int:
    return int(tokenizer.num_special_tokens_to_add(pair=False))


def _token_counts(tokenizer, texts: list[str]) -> np.ndarray:
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))


def _cached_json(path: str, compute):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)
    return value


def chars_to_tokens_ratio(index: FileIndex, tokenizer, cache_dir: str, fingerprint: str) -> float:
    """Fitted passage tokens per character (special tokens excluded) for one file."""
    def compute() -> float:
        n = len(index)
        rows = np.random.default_rng(0).choice(n, size=min(n, SAMPLE_LINES), replace=False) if n else []
        reader = LineReader(index.path, index.text_path)
        texts = [t[:SAMPLE_CHARS] for r in sorted(rows) for rec in [reader.record(index, int(r))]
                 for t in rec.pos + rec.neg]
        reader.close()
        if not texts:
            return 0.3
        tokens = _token_counts(tokenizer, texts) - _n_special(tokenizer)
        chars = sum(len(t) for t in texts)
        return float(max(tokens.sum(), 1) / max(chars, 1))

    path = os.path.join(cache_dir, "lengths", f"{index.key}-{fingerprint}-ratio.json")
    return float(_cached_json(path, compute))


def exact_passage_tokens(index: FileIndex, tokenizer, cache_dir: str, fingerprint: str) -> np.ndarray:
    """int32 [n, 2]: token count of each line's longest positive and longest negative (0 if none); every passage
    tokenized once; cached."""
    path = os.path.join(cache_dir, "lengths", f"{index.key}-{fingerprint}-exact.npy")
    if os.path.exists(path):
        return np.load(path)
    reader = LineReader(index.path, index.text_path)
    out = np.zeros((len(index), 2), dtype=np.int32)
    chunk = 1024
    for lo in range(0, len(index), chunk):
        recs = [reader.record(index, r) for r in range(lo, min(lo + chunk, len(index)))]
        texts = [t for rec in recs for t in rec.pos + rec.neg]
        counts = _token_counts(tokenizer, texts)
        owner = np.repeat(np.arange(len(recs)), [len(rec.pos) + len(rec.neg) for rec in recs])
        side = np.concatenate([np.r_[np.zeros(len(rec.pos), int), np.ones(len(rec.neg), int)] for rec in recs])
        longest = np.zeros((len(recs), 2), dtype=np.int64)
        np.maximum.at(longest, (owner, side), counts)
        out[lo : lo + len(recs)] = longest
    reader.close()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npy")
    with os.fdopen(fd, "wb") as f:
        np.save(f, out)
    os.replace(tmp, path)
    return out


def passage_token_lengths(index: FileIndex, tokenizer, mode: str, cache_dir: str, fingerprint: str) -> np.ndarray:
    """int32 [n, 2]: estimated (``sample``) or exact token length of each line's longest positive and longest
    negative (0 when the line has no negative)."""
    if mode == "auto":
        mode = "exact" if len(index) <= AUTO_EXACT_MAX_LINES else "sample"
    if mode == "exact":
        return exact_passage_tokens(index, tokenizer, cache_dir, fingerprint)
    if mode != "sample":
        raise DataConfigError(f"length_estimate must be one of {LENGTH_MODES}, got '{mode}'")
    ratio = chars_to_tokens_ratio(index, tokenizer, cache_dir, fingerprint)
    chars = np.stack([index.pos_chars, index.neg_chars], axis=1)
    return np.where(chars > 0, np.ceil(chars * ratio) + _n_special(tokenizer), 0).astype(np.int32)
