"""Deterministic synthetic FlagEmbedding jsonl files (for tests and benchmarks of the data pipeline).

Texts are random words; passage lengths are drawn log-uniformly in ``passage_words`` so that several length
buckets are populated. Query ``i`` of a file is unique (it contains ``q<i>``) unless ``duplicate_every`` is set.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import numpy as np

_SYLLABLES = ["ka", "to", "mi", "re", "su", "na", "lo", "pe", "di", "ga", "bu", "ze", "fo", "ri", "ya", "ku"]


def _words(rng: np.random.Generator, n: int) -> str:
    idx = rng.integers(0, len(_SYLLABLES), size=(n, 2))
    return " ".join(_SYLLABLES[a] + _SYLLABLES[b] for a, b in idx)


def synthetic_lines(n: int, *, language: str | None = None, seed: int = 0, n_neg: int = 7,
                    passage_words: tuple[int, int] = (5, 60), scores: bool = False,
                    duplicate_every: int | None = None, n_pos: int = 1) -> Iterator[dict]:
    rng = np.random.default_rng(seed)
    lo, hi = np.log(passage_words[0]), np.log(passage_words[1])
    for i in range(n):
        qid = i // duplicate_every if duplicate_every else i
        k = int(np.exp(rng.uniform(lo, hi)))
        line = {
            "query": f"q{qid} " + _words(rng, 3),
            "pos": [f"p{i}.{j} " + _words(rng, k) for j in range(n_pos)],
            "neg": [f"n{i}.{j} " + _words(rng, max(1, int(k * rng.uniform(0.7, 1.0)))) for j in range(n_neg)],
        }
        if scores:
            line["pos_scores"] = [float(rng.uniform(0.5, 1.0)) for _ in range(n_pos)]
            line["neg_scores"] = [float(rng.uniform(0.0, 0.5)) for _ in range(n_neg)]
        if language is not None:
            line["language"] = language
        yield line


def write_jsonl(path: str, lines, *, raw_lines: dict[int, str] | None = None) -> str:
    """Write ``lines`` (dicts) as jsonl (gzip if ``path`` ends with .gz); ``raw_lines`` {0-based position: text}
    replaces some lines verbatim (to plant bad input)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            text = raw_lines[i] if raw_lines and i in raw_lines else json.dumps(line, ensure_ascii=False)
            f.write(text + "\n")
    return str(path)
