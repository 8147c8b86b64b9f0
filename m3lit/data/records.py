"""Parse and validate one line of FlagEmbedding training jsonl.

A line is ``{"query": str, "pos": [str, ...], "neg": [str, ...], "pos_scores"?: [float], "neg_scores"?: [float],
"prompt"?: str, "type"?: str, "language"?: str, "query_translation"?: str, "pos_translation"?: [str, ...]}``.
``pos`` must be non-empty; ``neg`` may be missing (= []); no text may be empty. The translations (the query and the
positives in another language, ``pos_translation`` aligned with ``pos``) form the second view of
``teacher=views view=translation``.
Score lists, when given, must be finite numbers (JSON's NaN / Infinity are refused), as many as the texts they score.
"""
from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass
from numbers import Real
from typing import Iterator

from .errors import BadLineError


@dataclass(frozen=True)
class TrainRecord:
    """One validated training example."""

    query: str
    pos: list[str]
    neg: list[str]
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None
    language: str | None = None
    type: str | None = None
    query_translation: str | None = None
    pos_translation: list[str] | None = None

    @property
    def has_scores(self) -> bool:
        return self.pos_scores is not None


def _text_list(obj: dict, field: str, path: str, line: int, required: bool) -> list[str]:
    if field not in obj or obj[field] is None:
        if required:
            raise BadLineError(path, line, field, "missing")
        return []
    value = obj[field]
    if not isinstance(value, list):
        raise BadLineError(path, line, field, f"expected a list of strings, got {type(value).__name__}")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise BadLineError(path, line, f"{field}[{i}]", f"expected a string, got {type(text).__name__}")
        if not text.strip():
            raise BadLineError(path, line, f"{field}[{i}]", "empty string")
    return value


def _score_list(obj: dict, field: str, n_texts: int, texts_field: str, path: str, line: int) -> list[float] | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadLineError(path, line, field, f"expected a list of numbers, got {type(value).__name__}")
    for i, score in enumerate(value):
        if isinstance(score, bool) or not isinstance(score, Real):
            raise BadLineError(path, line, f"{field}[{i}]", f"expected a number, got {type(score).__name__}")
        if not math.isfinite(score):
            raise BadLineError(path, line, f"{field}[{i}]", f"not a finite number ({score})")
    if len(value) != n_texts:
        raise BadLineError(path, line, field, f"has {len(value)} scores but '{texts_field}' has {n_texts} texts")
    return [float(s) for s in value]


def _optional_str(obj: dict, field: str, path: str, line: int) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise BadLineError(path, line, field, f"expected a string, got {type(value).__name__}")
    return value


def parse_record(raw: bytes | str, path: str, line: int) -> TrainRecord:
    """Decode and validate one jsonl line; raise :class:`BadLineError` naming ``path``, ``line`` and the field."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadLineError(path, line, "<json>", f"malformed JSON: {err}") from None
    if not isinstance(obj, dict):
        raise BadLineError(path, line, "<json>", f"expected a JSON object, got {type(obj).__name__}")
    if "query" not in obj or obj["query"] is None:
        raise BadLineError(path, line, "query", "missing")
    query = obj["query"]
    if not isinstance(query, str):
        raise BadLineError(path, line, "query", f"expected a string, got {type(query).__name__}")
    if not query.strip():
        raise BadLineError(path, line, "query", "empty string")
    pos = _text_list(obj, "pos", path, line, required=True)
    if not pos:
        raise BadLineError(path, line, "pos", "empty list (at least one positive is needed)")
    neg = _text_list(obj, "neg", path, line, required=False)
    pos_scores = _score_list(obj, "pos_scores", len(pos), "pos", path, line)
    neg_scores = _score_list(obj, "neg_scores", len(neg), "neg", path, line)
    if (pos_scores is None) != (neg_scores is None) and (neg or pos_scores is None):
        present, absent = ("pos_scores", "neg_scores") if pos_scores is not None else ("neg_scores", "pos_scores")
        raise BadLineError(path, line, absent, f"missing while '{present}' is given")
    if pos_scores is not None and neg_scores is None:
        neg_scores = []
    query_translation = _optional_str(obj, "query_translation", path, line)
    if query_translation is not None and not query_translation.strip():
        raise BadLineError(path, line, "query_translation", "empty string")
    pos_translation = _text_list(obj, "pos_translation", path, line, required=False) or None
    if pos_translation is not None and len(pos_translation) != len(pos):
        raise BadLineError(path, line, "pos_translation", f"has {len(pos_translation)} texts but 'pos' has {len(pos)}")
    return TrainRecord(
        query=query,
        pos=pos,
        neg=neg,
        pos_scores=pos_scores,
        neg_scores=neg_scores,
        prompt=_optional_str(obj, "prompt", path, line),
        language=_optional_str(obj, "language", path, line),
        type=_optional_str(obj, "type", path, line),
        query_translation=query_translation,
        pos_translation=pos_translation,
    )


def iter_file_records(path: str) -> Iterator[tuple[int, str, TrainRecord]]:
    """(line number, raw JSON line, validated record) of every non-blank line of a training source — jsonl(.gz), or a
    table source (parquet, arrow, saved ``datasets``, ``hf://``; row i is line i + 1) — in order; a bad line raises
    ``BadLineError`` naming the source and its line (row)."""
    from .tables import is_table_source, iter_rows, row_json

    if is_table_source(path):
        for row_no, row in enumerate(iter_rows(path)):
            raw = row_json(row)
            try:
                yield row_no + 1, raw, parse_record(raw, path, row_no + 1)
            except BadLineError as err:
                raise BadLineError(path, err.line, err.field, err.message, unit="row") from None
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
        for line_no, raw in enumerate(f, 1):
            if raw.strip():
                yield line_no, raw, parse_record(raw, path, line_no)
