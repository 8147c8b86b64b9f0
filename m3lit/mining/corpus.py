"""The texts negatives are mined from, and the text normalisation that recognises a positive in them.

A corpus is a list of unique texts (the first occurrence of each normalised text is kept). By default it is every
passage (``pos`` and ``neg``) of the training file being mined; ``corpus=`` takes a BEIR folder (its
``corpus.jsonl``, ``title + text``) or a jsonl(.gz) file of ``{"text": ...}`` objects.
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field

from ..data.records import iter_file_records
from ..eval.beir import CORPUS_FILES, first_existing, iter_jsonl, read_texts

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: two texts equal under it are the same passage."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str, n: int = 3) -> frozenset[str]:
    """Character n-grams of the normalised text (language-independent: also for scripts without spaces)."""
    t = normalise(text)
    return frozenset(t[i:i + n] for i in range(max(len(t) - n + 1, 1)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class MiningCorpus:
    """Unique texts; ``index_of`` maps a normalised text to its position."""

    texts: list[str] = field(default_factory=list)
    index_of: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def add(self, text: str) -> int:
        key = normalise(text)
        found = self.index_of.get(key)
        if found is None:
            found = self.index_of[key] = len(self.texts)
            self.texts.append(text)
        return found

    def find(self, text: str) -> int | None:
        return self.index_of.get(normalise(text))

    def __len__(self) -> int:
        return len(self.texts)


def corpus_from_training_file(path: str) -> MiningCorpus:
    """Every ``pos`` and ``neg`` text of the training file, deduplicated."""
    corpus = MiningCorpus(source=f"{path} (pos + neg)")
    for _, _, record in iter_file_records(path):
        for text in (*record.pos, *record.neg):
            corpus.add(text)
    return corpus


def load_corpus(path: str, field_name: str = "text") -> MiningCorpus:
    """A BEIR folder (``corpus.jsonl[.gz]``, titles prepended) or a jsonl(.gz) file of objects holding
    ``field_name``; errors name the file and line."""
    corpus = MiningCorpus(source=path)
    if os.path.isdir(path):
        found = first_existing(path, CORPUS_FILES)
        if found is None:
            raise FileNotFoundError(f"corpus={path}: a folder without corpus.jsonl (expected a BEIR dataset folder)")
        for text in read_texts(found).values():
            corpus.add(text)
    elif os.path.isfile(path):
        for line_no, obj in iter_jsonl(path):
            value = obj.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path}:{line_no}: field {field_name!r} missing, empty or not a string")
            corpus.add(value)
    else:
        raise FileNotFoundError(f"corpus={path}: no such file or folder")
    if not len(corpus):
        raise ValueError(f"corpus={path}: no texts")
    return corpus
