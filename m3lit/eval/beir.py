"""Read BEIR-layout retrieval datasets: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

A dataset folder holds those three files (``.jsonl.gz`` also accepted). A folder of dataset folders (at any
depth) is a benchmark: every dataset in it is found and named by its path relative to that folder.
Malformed input raises :class:`BeirFormatError` naming the file, the line and the field.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import IO, Iterator

log = logging.getLogger(__name__)

CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz")
QUERIES_FILES = ("queries.jsonl", "queries.jsonl.gz")


class BeirFormatError(ValueError):
    """A BEIR file is missing or malformed; the message names the file, line and field."""


@dataclass
class BeirDataset:
    """One retrieval dataset.

    corpus: doc id -> text (``title + " " + text`` when a title is present);
    queries: query id -> text, only the queries judged in ``qrels``;
    qrels: query id -> {doc id: grade} (grades ≥ 1 are relevant; 0 and below are judged non-relevant).
    """

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    path: str = ""
    split: str = "test"
    stats: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"BeirDataset({self.name!r}, corpus={len(self.corpus)}, queries={len(self.queries)}, "
                f"split={self.split!r})")


def _open_text(path: str) -> IO[str]:
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def first_existing(folder: str, names: tuple[str, ...]) -> str | None:
    for name in names:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for every non-empty line; errors name ``path:line``."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise BeirFormatError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise BeirFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _string_field(obj: dict, key: str, path: str, lineno: int, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise BeirFormatError(f"{path}:{lineno}: missing field {key!r}")
        return ""
    value = obj[key]
    if key == "_id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BeirFormatError(f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def read_texts(path: str, use_titles: bool = True) -> dict[str, str]:
    """Read a corpus or queries jsonl: ``{"_id", "text", "title"?}`` per line -> {id: text}."""
    texts: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        doc_id = _string_field(obj, "_id", path, lineno)
        text = _string_field(obj, "text", path, lineno)
        title = _string_field(obj, "title", path, lineno, required=False) if use_titles else ""
        if doc_id in texts:
            raise BeirFormatError(f"{path}:{lineno}: field '_id': duplicate id {doc_id!r}")
        texts[doc_id] = f"{title} {text}".strip() if title else text
    return texts


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """Read ``query-id<TAB>corpus-id<TAB>score`` lines (an optional header line is skipped)."""
    qrels: dict[str, dict[str, int]] = {}
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if lineno == 1 and cols[0].strip().lower() in ("query-id", "query_id", "qid", "query"):
                continue
            if len(cols) != 3:
                raise BeirFormatError(
                    f"{path}:{lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(cols)}")
            qid, did, raw = (c.strip() for c in cols)
            if not qid:
                raise BeirFormatError(f"{path}:{lineno}: field 'query-id' is empty")
            if not did:
                raise BeirFormatError(f"{path}:{lineno}: field 'corpus-id' is empty")
            try:
                grade_f = float(raw)
            except ValueError:
                raise BeirFormatError(f"{path}:{lineno}: field 'score' must be an integer, got {raw!r}") from None
            if grade_f != int(grade_f):
                raise BeirFormatError(f"{path}:{lineno}: field 'score' must be an integer, got {raw!r}")
            grade = int(grade_f)
            judged = qrels.setdefault(qid, {})
            if did in judged and judged[did] != grade:
                raise BeirFormatError(f"{path}:{lineno}: pair ({qid!r}, {did!r}) judged twice with different "
                                      f"scores ({judged[did]} and {grade})")
            judged[did] = grade
    return qrels


def available_splits(folder: str) -> list[str]:
    qrels_dir = os.path.join(folder, "qrels")
    if not os.path.isdir(qrels_dir):
        return []
    return sorted(n[: -len(".tsv")] for n in os.listdir(qrels_dir) if n.endswith(".tsv"))


def is_beir_dataset(folder: str) -> bool:
    return first_existing(folder, CORPUS_FILES) is not None


def find_beir_datasets(root: str) -> dict[str, str]:
    """{name: folder} for ``root`` itself (name = its basename) or every dataset folder below it.

    Names below a benchmark folder are relative paths (``"de"``, ``"manlong/ja"``), sorted.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"beir={root!r}: no such directory")
    if is_beir_dataset(root):
        return {os.path.basename(root.rstrip(os.sep)): root}
    found: dict[str, str] = {}
    for folder, subdirs, _ in os.walk(root, followlinks=True):
        subdirs.sort()
        if folder != root and is_beir_dataset(folder):
            found[os.path.relpath(folder, root).replace(os.sep, "/")] = folder
            subdirs[:] = []
    if not found:
        raise FileNotFoundError(f"beir={root!r}: neither a BEIR dataset ({CORPUS_FILES[0]}, {QUERIES_FILES[0]}, "
                                f"qrels/<split>.tsv) nor a folder containing such datasets")
    return dict(sorted(found.items()))


def load_beir(folder: str, split: str = "test", name: str | None = None, use_titles: bool = True,
              max_queries: int | None = None) -> BeirDataset:
    """Load one BEIR dataset folder; ``split`` picks ``qrels/<split>.tsv``.

    Qrels of queries absent from ``queries.jsonl`` are dropped (counted in ``stats``); judged documents absent
    from the corpus are kept, so they count against recall like in trec_eval. ``max_queries`` keeps the first
    queries in sorted id order (a quick subset for evaluation during training).
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such directory")
    corpus_path = first_existing(folder, CORPUS_FILES)
    queries_path = first_existing(folder, QUERIES_FILES)
    if corpus_path is None:
        raise FileNotFoundError(f"{folder}: missing {CORPUS_FILES[0]}")
    if queries_path is None:
        raise FileNotFoundError(f"{folder}: missing {QUERIES_FILES[0]}")
    qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
    if not os.path.isfile(qrels_path):
        splits = available_splits(folder)
        raise FileNotFoundError(f"{qrels_path}: no qrels for split={split!r}; available splits: {splits or 'none'}")
    corpus = read_texts(corpus_path, use_titles=use_titles)
    if not corpus:
        raise BeirFormatError(f"{corpus_path}: empty corpus (no document to retrieve)")
    all_queries = read_texts(queries_path, use_titles=False)
    qrels = read_qrels(qrels_path)
    dropped = sorted(q for q in qrels if q not in all_queries)
    for qid in dropped:
        del qrels[qid]
    if dropped:
        log.warning("%s: %d judged query id(s) missing from %s (e.g. %r); they are not evaluated",
                    qrels_path, len(dropped), queries_path, dropped[0])
    unknown_docs = sum(1 for judged in qrels.values() for d in judged if d not in corpus)
    relevant = [d for judged in qrels.values() for d, grade in judged.items() if grade > 0]
    if relevant and not any(d in corpus for d in relevant):
        raise BeirFormatError(f"{qrels_path}: none of its {len(relevant)} relevant judgment(s) names a document of "
                              f"{corpus_path} (e.g. {relevant[0]!r}): qrels and corpus do not belong together")
    if unknown_docs:
        log.warning("%s: %d judgment(s) name documents missing from %s; they count as never retrieved",
                    qrels_path, unknown_docs, corpus_path)
    if max_queries is not None:
        qrels = {q: qrels[q] for q in sorted(qrels)[:max_queries]}
    if not qrels:
        raise BeirFormatError(f"{qrels_path}: no judged query found in {queries_path}")
    queries = {q: all_queries[q] for q in sorted(qrels)}
    stats = {"corpus": len(corpus), "queries": len(queries), "qrels_dropped_queries": len(dropped),
             "qrels_unknown_docs": unknown_docs}
    return BeirDataset(name=name or os.path.basename(folder), corpus=corpus, queries=queries, qrels=qrels,
                       path=folder, split=split, stats=stats)


def query_hash(query_id: str, seed: int = 0) -> float:
    """sha256("<seed>:<query id>") read as a number in [0, 1): the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split_queries(dataset: BeirDataset, fraction: float, seed: int = 0) -> tuple[BeirDataset, BeirDataset]:
    """(kept, held out): a query is held out when its :func:`query_hash` is below ``fraction`` — independent of
    the order and of the other queries. A side left empty by chance (a handful of queries) gets the one query
    nearest the threshold; the corpus is shared."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"query split fraction={fraction}: expected a value between 0 and 1 (exclusive)")
    if len(dataset.qrels) < 2:
        raise ValueError(f"{dataset.path or dataset.name}: {len(dataset.qrels)} judged query cannot be split into "
                         "dev and test queries")
    scores = {q: query_hash(q, seed) for q in dataset.qrels}
    held = {q for q, h in scores.items() if h < fraction}
    if not held:
        held = {min(scores, key=scores.get)}
    elif len(held) == len(scores):
        held.discard(max(scores, key=scores.get))

    def part(ids: set[str], split: str) -> BeirDataset:
        qrels = {q: j for q, j in dataset.qrels.items() if q in ids}
        return replace(dataset, queries={q: t for q, t in dataset.queries.items() if q in ids}, qrels=qrels,
                       split=split, stats={**dataset.stats, "queries": len(qrels)})

    kept = set(dataset.qrels) - held
    return (part(kept, f"{dataset.split}[not held out {fraction:g}]"),
            part(held, f"{dataset.split}[held out {fraction:g}]"))


def load_beir_datasets(root: str, split: str = "test", names: list[str] | None = None, use_titles: bool = True,
                       max_queries: int | None = None) -> list[BeirDataset]:
    """Load every dataset under ``root`` (see :func:`find_beir_datasets`); ``names`` selects a subset."""
    found = find_beir_datasets(root)
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise FileNotFoundError(f"beir={root!r}: dataset(s) {missing} not found; available: {list(found)}")
        found = {n: found[n] for n in names}
    return [load_beir(path, split=split, name=name, use_titles=use_titles, max_queries=max_queries)
            for name, path in found.items()]
