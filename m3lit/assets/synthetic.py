"""Deterministic generator of a small synthetic multilingual retrieval corpus.

Model of the task (the same in every language, see :mod:`m3lit.assets.lexicon`):

- a *document* is a bag of 5–8 distinct concepts (mildly Zipf-distributed, a different order per language),
  written as concept words interleaved with 1–3 frequent filler words each (synonym form with prob. 0.15);
- a *query* names k ∈ {2, 3, 4} of its document's concepts (synonym form with prob. 0.5), in random order,
  usually after a question word, with 1–3 fillers that documents also contain;
- a *hard negative* shares 1..k-1 of the query's concepts (never all) and often some of the positive's other
  concepts, so counting shared words does not decide: fillers and synonyms blur lexical overlap;
- relevance in the held-out split is coverage: grade 2 if a document holds all k query concepts, grade 1 if it
  holds k-1 of them (k ≥ 3), otherwise 0.

Outputs of :func:`write_corpus` (all UTF-8, one JSON object a line):

- ``train/<lang>.jsonl``: ``{"query", "pos": [1], "neg": [3..7], "language"}`` per language;
- ``train/xling_<lang>-en.jsonl``: query in a non-English language, passages in English (concepts translate word
  by word through the shared concept table), ``"language": "<lang>-en"``;
- ``train/distill_en.jsonl``: English lines that also carry ``pos_scores`` / ``neg_scores`` (teacher logits
  ≈ 2 + 6·coverage + noise);
- ``dev/<lang>/``: BEIR split (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) of new documents and
  queries, none of them equal to a training text.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from m3lit.assets.lexicon import LANGUAGES, Lexicon, lexicon, num_concepts

TRAIN_LINES_PER_LANGUAGE = 400
XLING_LINES_PER_LANGUAGE = 60
DISTILL_LINES = 160
DEV_QUERIES = 50
DEV_DOCS = 300

DOC_CONCEPTS = (5, 8)
QUERY_CONCEPTS = (2, 3, 4)
QUERY_CONCEPT_WEIGHTS = (0.25, 0.45, 0.30)
NEGATIVES = (3, 7)
DOC_SYNONYM_PROB = 0.15
QUERY_SYNONYM_PROB = 0.5
FILLER_ZIPF = 0.9

T = TypeVar("T", "Query", "Document")


@dataclass(frozen=True)
class Document:
    """A generated passage: its concept ids and its text."""

    concepts: frozenset[int]
    text: str


@dataclass(frozen=True)
class Query:
    """A generated query: the concept ids it asks for and its text."""

    concepts: frozenset[int]
    text: str


def _stream(seed: int, *names: str) -> random.Random:
    """An independent, reproducible random stream for (seed, names) (string seeding is hash-randomisation free)."""
    return random.Random(":".join([str(seed), *names]))


def relevance(query: frozenset[int], document: frozenset[int]) -> int:
    """Graded relevance by concept coverage: 2 = all query concepts, 1 = all but one (k ≥ 3), else 0."""
    covered = len(query & document)
    if covered == len(query):
        return 2
    if len(query) >= 3 and covered == len(query) - 1:
        return 1
    return 0


class Writer:
    """Renders concept sets as text in one language, with concept frequencies fixed by ``seed``."""

    def __init__(self, lex: Lexicon, seed: int) -> None:
        self.lex = lex
        order = list(range(num_concepts()))
        _stream(seed, "concept-order", lex.language).shuffle(order)
        self.concepts = tuple(order)
        self.concept_cum_weights = tuple(itertools.accumulate(1.0 / (rank + 8.0) for rank in range(len(order))))
        self.filler_cum_weights = tuple(
            itertools.accumulate(1.0 / (rank + 1.0) ** FILLER_ZIPF for rank in range(len(lex.fillers)))
        )

    def sample_concepts(
        self, rng: random.Random, count: int, exclude: set[int] | frozenset[int] = frozenset()
    ) -> list[int]:
        """``count`` distinct concepts drawn by frequency, none in ``exclude`` (weighted, without replacement)."""
        if count > len(self.concepts) - len(exclude):
            raise ValueError(f"cannot draw {count} concepts with {len(exclude)} excluded")
        chosen: list[int] = []
        while len(chosen) < count:
            concept = rng.choices(self.concepts, cum_weights=self.concept_cum_weights)[0]
            if concept not in exclude and concept not in chosen:
                chosen.append(concept)
        return chosen

    def _form(self, rng: random.Random, concept: int, synonym_prob: float) -> str:
        forms = self.lex.concepts[concept]
        return forms[1] if len(forms) > 1 and rng.random() < synonym_prob else forms[0]

    def _fillers(self, rng: random.Random, count: int) -> list[str]:
        return rng.choices(self.lex.fillers, cum_weights=self.filler_cum_weights, k=count)

    def document(self, rng: random.Random, concepts: list[int]) -> Document:
        """Concept words in random order, each after 1–3 fillers; one concept may repeat."""
        order = list(concepts)
        rng.shuffle(order)
        if rng.random() < 0.3:
            order.insert(rng.randrange(1, len(order) + 1), rng.choice(order))
        gaps = [rng.randint(1, 3) for _ in order] + [rng.randint(0, 2)]
        fillers = iter(self._fillers(rng, sum(gaps)))
        words: list[str] = []
        for concept, gap in zip(order, gaps):
            words += itertools.islice(fillers, gap)
            words.append(self._form(rng, concept, DOC_SYNONYM_PROB))
        words += fillers
        return Document(frozenset(concepts), self.lex.joiner.join(words) + self.lex.sentence_end)

    def query(self, rng: random.Random, concepts: list[int]) -> Query:
        """Optional question word, then the concepts in random order with 1–3 fillers spread between them."""
        order = list(concepts)
        rng.shuffle(order)
        words = [self._form(rng, concept, QUERY_SYNONYM_PROB) for concept in order]
        for filler in self._fillers(rng, rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), filler)
        if rng.random() < 0.7:
            words.insert(0, rng.choice(self.lex.question_words))
        end = self.lex.question_end if rng.random() < 0.5 else ""
        return Query(frozenset(concepts), self.lex.joiner.join(words) + end)


@dataclass(frozen=True)
class Example:
    """One training line before serialisation."""

    query: Query
    pos: Document
    negs: tuple[Document, ...]


def _hard_negative(
    rng: random.Random, writer: Writer, query: frozenset[int], positive: frozenset[int], max_shared: int
) -> Document:
    """A document sharing 1..max_shared query concepts and up to 2 of the positive's other concepts."""
    shared = rng.sample(sorted(query), rng.randint(1, max_shared))
    others = sorted(positive - query)
    shared += rng.sample(others, rng.randint(0, min(2, len(others))))
    size = max(rng.randint(*DOC_CONCEPTS), len(shared) + 1)
    fresh = writer.sample_concepts(rng, size - len(shared), exclude=set(query) | set(shared))
    return writer.document(rng, shared + fresh)


def make_example(rng: random.Random, query_writer: Writer, passage_writer: Writer) -> Example:
    """A query (in the query writer's language) with its positive and 3–7 hard negatives (passage language)."""
    concepts = passage_writer.sample_concepts(rng, rng.randint(*DOC_CONCEPTS))
    k = rng.choices(QUERY_CONCEPTS, weights=QUERY_CONCEPT_WEIGHTS)[0]
    asked = rng.sample(concepts, k)
    positive = passage_writer.document(rng, concepts)
    negs = tuple(
        _hard_negative(rng, passage_writer, frozenset(asked), positive.concepts, k - 1)
        for _ in range(rng.randint(*NEGATIVES))
    )
    return Example(query_writer.query(rng, asked), positive, negs)


def teacher_score(rng: random.Random, query: frozenset[int], document: frozenset[int]) -> float:
    """Synthetic teacher logit: 2 + 6·(covered query concepts / k) + N(0, 0.3), rounded to 3 decimals."""
    coverage = len(query & document) / len(query)
    return round(2.0 + 6.0 * coverage + rng.gauss(0.0, 0.3), 3)


def _line(example: Example, language: str, rng: random.Random | None = None) -> dict:
    record: dict = {
        "query": example.query.text,
        "pos": [example.pos.text],
        "neg": [neg.text for neg in example.negs],
        "language": language,
    }
    if rng is not None:
        record["pos_scores"] = [teacher_score(rng, example.query.concepts, example.pos.concepts)]
        record["neg_scores"] = [teacher_score(rng, example.query.concepts, neg.concepts) for neg in example.negs]
    return record


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _examples(rng: random.Random, query_writer: Writer, passage_writer: Writer, count: int) -> list[Example]:
    return [make_example(rng, query_writer, passage_writer) for _ in range(count)]


def _texts(examples: list[Example]) -> tuple[set[str], set[str]]:
    """(query texts, passage texts) of a list of examples."""
    queries = {example.query.text for example in examples}
    passages = {doc.text for example in examples for doc in (example.pos, *example.negs)}
    return queries, passages


def write_train(train_dir: Path, writers: dict[str, Writer], seed: int) -> tuple[set[str], set[str]]:
    """Write the training jsonl files; return all (query texts, passage texts) written."""
    queries: set[str] = set()
    passages: set[str] = set()

    def keep(examples: list[Example]) -> None:
        q, p = _texts(examples)
        queries.update(q)
        passages.update(p)

    for language in LANGUAGES:
        rng = _stream(seed, "train", language)
        examples = _examples(rng, writers[language], writers[language], TRAIN_LINES_PER_LANGUAGE)
        keep(examples)
        _write_jsonl(train_dir / f"{language}.jsonl", [_line(e, language) for e in examples])

    for language in LANGUAGES:
        if language == "en":
            continue
        rng = _stream(seed, "xling", language)
        examples = _examples(rng, writers[language], writers["en"], XLING_LINES_PER_LANGUAGE)
        keep(examples)
        _write_jsonl(train_dir / f"xling_{language}-en.jsonl", [_line(e, f"{language}-en") for e in examples])

    rng = _stream(seed, "distill", "en")
    examples = _examples(rng, writers["en"], writers["en"], DISTILL_LINES)
    keep(examples)
    _write_jsonl(train_dir / "distill_en.jsonl", [_line(e, "en", rng) for e in examples])
    return queries, passages


def _fresh(make: Callable[[], T], taken: set[str]) -> T:
    """Call ``make()`` until its ``.text`` is not in ``taken``; add that text to ``taken``."""
    for _ in range(1000):
        item = make()
        if item.text not in taken:
            taken.add(item.text)
            return item
    raise RuntimeError("synthetic generator: could not produce a text distinct from the training texts")


def write_dev(dev_dir: Path, writer: Writer, seed: int, train_queries: set[str], train_passages: set[str]) -> None:
    """Write one BEIR folder ``dev_dir`` for the writer's language, disjoint from the training texts.

    Per query: its source document (grade 2), with prob. 0.4 a document covering k-1 of its concepts, and 2–3
    hard distractors sharing 1..max(1, k-2) of its concepts; random background documents fill the corpus up to
    :data:`DEV_DOCS`. Qrels are then computed by :func:`relevance` over the whole corpus.
    """
    language = writer.lex.language
    rng = _stream(seed, "dev", language)
    taken_docs, taken_queries = set(train_passages), set(train_queries)
    queries: list[Query] = []
    docs: list[Document] = []
    for _ in range(DEV_QUERIES):
        concepts = writer.sample_concepts(rng, rng.randint(*DOC_CONCEPTS))
        k = rng.choices(QUERY_CONCEPTS, weights=QUERY_CONCEPT_WEIGHTS)[0]
        asked = rng.sample(concepts, k)
        queries.append(_fresh(partial(writer.query, rng, asked), taken_queries))
        docs.append(_fresh(partial(writer.document, rng, concepts), taken_docs))
        if k >= 3 and rng.random() < 0.4:
            covered = rng.sample(asked, k - 1)
            extra = writer.sample_concepts(rng, rng.randint(*DOC_CONCEPTS) - len(covered), exclude=set(asked))
            docs.append(_fresh(partial(writer.document, rng, covered + extra), taken_docs))
        distractor = partial(_hard_negative, rng, writer, frozenset(asked), frozenset(concepts), max(1, k - 2))
        docs += [_fresh(distractor, taken_docs) for _ in range(rng.randint(2, 3))]
    while len(docs) < DEV_DOCS:
        concepts = writer.sample_concepts(rng, rng.randint(*DOC_CONCEPTS))
        docs.append(_fresh(partial(writer.document, rng, concepts), taken_docs))
    rng.shuffle(docs)

    doc_ids = [f"{language}-d{i:04d}" for i in range(len(docs))]
    query_ids = [f"{language}-q{i:03d}" for i in range(len(queries))]
    _write_jsonl(dev_dir / "corpus.jsonl", [{"_id": i, "title": "", "text": d.text} for i, d in zip(doc_ids, docs)])
    _write_jsonl(dev_dir / "queries.jsonl", [{"_id": i, "text": q.text} for i, q in zip(query_ids, queries)])
    rows = ["query-id\tcorpus-id\tscore"]
    for query_id, query in zip(query_ids, queries):
        for doc_id, doc in zip(doc_ids, docs):
            grade = relevance(query.concepts, doc.concepts)
            if grade:
                rows.append(f"{query_id}\t{doc_id}\t{grade}")
    (dev_dir / "qrels").mkdir(parents=True, exist_ok=True)
    (dev_dir / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_corpus(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Generate the whole corpus under ``out_dir``; return (train_dir, dev_dir). Same seed → same bytes."""
    out_dir = Path(out_dir)
    writers = {language: Writer(lexicon(language), seed) for language in LANGUAGES}
    train_dir, dev_dir = out_dir / "train", out_dir / "dev"
    train_queries, train_passages = write_train(train_dir, writers, seed)
    for language in LANGUAGES:
        write_dev(dev_dir / language, writers[language], seed, train_queries, train_passages)
    return train_dir, dev_dir
