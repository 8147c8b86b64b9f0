"""Default assets: synthetic multilingual corpus, BEIR dev split and offline tokenizer."""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import m3lit.assets as assets_module
from m3lit.assets import LANGUAGES, SCRIPTS, ensure_default_assets
from m3lit.assets.__main__ import main as assets_cli
from m3lit.assets.lexicon import dictionary, lexicon
from m3lit.assets.synthetic import Writer, make_example, relevance, write_corpus
from m3lit.assets.tokenizer import train_tokenizer

SPACED = [lang for lang in LANGUAGES if lexicon(lang).joiner == " "]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return ensure_default_assets(tmp_path_factory.mktemp("cache"), seed=0)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _script(text: str) -> str:
    """Dominant script of the letters of ``text`` (Unicode name prefix: LATIN, CYRILLIC, GREEK, CJK, ARABIC)."""
    names = Counter(unicodedata.name(ch).split()[0] for ch in text if ch.isalpha())
    return names.most_common(1)[0][0]


_SCRIPT_NAMES = {"Latin": "LATIN", "Cyrillic": "CYRILLIC", "Greek": "GREEK", "Han": "CJK", "Arabic": "ARABIC"}


def _concepts(text: str, language: str) -> set[int]:
    """Concept ids named in a space-separated text (synonyms included)."""
    index = {form: c for c, forms in enumerate(lexicon(language).concepts) for form in forms}
    return {index[word] for word in re.findall(r"\w+", text) if word in index}


def _dev(folder: Path) -> tuple[list[dict], list[dict], list[list[str]]]:
    lines = (folder / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    return _jsonl(folder / "corpus.jsonl"), _jsonl(folder / "queries.jsonl"), [l.split("\t") for l in lines[1:]]


def test_layout_and_sizes(assets):
    names = {p.name for p in assets.train_files}
    assert names == {f"{lang}.jsonl" for lang in LANGUAGES} | {f"xling_{lang}-en.jsonl" for lang in LANGUAGES if lang != "en"} | {"distill_en.jsonl"}
    assert set(assets.dev_sets) == set(LANGUAGES)
    for lang in LANGUAGES:
        assert len(_jsonl(assets.train_dir / f"{lang}.jsonl")) >= 300
        corpus, queries, _ = _dev(assets.dev_sets[lang])
        assert 40 <= len(queries) <= 60 and 200 <= len(corpus) <= 400
    assert json.loads((assets.root / assets_module.STAMP).read_text())["seed"] == 0


def test_same_seed_gives_identical_bytes(assets, tmp_path):
    write_corpus(tmp_path, seed=0)
    train_tokenizer(tmp_path / "train", tmp_path / "tokenizer")
    for sub in ("train", "dev", "tokenizer"):
        again, first = _files(tmp_path / sub), _files(assets.root / sub)
        assert again.keys() == first.keys() and again == first, sub


def test_other_seed_gives_other_examples():
    import random

    def examples(seed: int) -> list[str]:
        writer, rng = Writer(lexicon("en"), seed), random.Random(seed)
        return [make_example(rng, writer, writer).pos.text for _ in range(5)]

    assert examples(0) == examples(0)
    assert examples(0) != examples(1)


def test_training_lines_are_valid(assets):
    for path in assets.train_files:
        lines = _jsonl(path)
        assert lines, path
        for n, line in enumerate(lines, start=1):
            where = f"{path.name}:{n}"
            assert isinstance(line["query"], str) and line["query"], where
            assert len(line["pos"]) == 1 and all(isinstance(p, str) and p for p in line["pos"]), where
            assert 3 <= len(line["neg"]) <= 7 and all(isinstance(p, str) and p for p in line["neg"]), where
            assert not set(line["pos"]) & set(line["neg"]), where
            assert isinstance(line["language"], str), where
            if path.name == "distill_en.jsonl":
                assert len(line["pos_scores"]) == 1 and len(line["neg_scores"]) == len(line["neg"]), where
                assert all(isinstance(x, float) for x in line["pos_scores"] + line["neg_scores"]), where
            else:
                assert "pos_scores" not in line and "neg_scores" not in line, where


@pytest.mark.parametrize("language", SPACED)
def test_hard_negatives_share_some_but_not_all_query_concepts(assets, language):
    for line in _jsonl(assets.train_dir / f"{language}.jsonl"):
        asked = _concepts(line["query"], language)
        assert 2 <= len(asked) <= 4, line["query"]
        assert asked <= _concepts(line["pos"][0], language), line
        for neg in line["neg"]:
            assert 1 <= len(asked & _concepts(neg, language)) < len(asked), (line["query"], neg)


def test_teacher_scores_follow_coverage(assets):
    lines = _jsonl(assets.train_dir / "distill_en.jsonl")
    for line in lines:
        asked = _concepts(line["query"], "en")
        coverage = [len(asked & _concepts(t, "en")) / len(asked) for t in line["pos"] + line["neg"]]
        scores = line["pos_scores"] + line["neg_scores"]
        assert all(abs(s - (2 + 6 * c)) < 2.0 for s, c in zip(scores, coverage)), line
    wins = sum(line["pos_scores"][0] > max(line["neg_scores"]) for line in lines)
    assert wins / len(lines) > 0.9


def test_languages_are_in_their_scripts(assets):
    assert {SCRIPTS[lang] for lang in LANGUAGES} >= {"Latin", "Cyrillic", "Greek", "Han", "Arabic"}
    for lang in LANGUAGES:
        line = _jsonl(assets.train_dir / f"{lang}.jsonl")[0]
        assert line["language"] == lang
        for text in [line["query"], *line["pos"], *line["neg"]]:
            assert _script(text) == _SCRIPT_NAMES[SCRIPTS[lang]], (lang, text)
        corpus, queries, _ = _dev(assets.dev_sets[lang])
        assert _script(corpus[0]["text"]) == _script(queries[0]["text"]) == _SCRIPT_NAMES[SCRIPTS[lang]]
    words = set(re.findall(r"\w+", (assets.train_dir / "de.jsonl").read_text(encoding="utf-8")))
    assert {"Fluss", "Brücke", "der", "und"} <= words and not {"river", "bridge"} & words


def test_cross_lingual_queries_translate_to_english_passages(assets):
    lines = []
    for lang in LANGUAGES:
        if lang != "en":
            pair = _jsonl(assets.train_dir / f"xling_{lang}-en.jsonl")
            assert {line["language"] for line in pair} == {f"{lang}-en"}
            lines += pair
    english = {form for forms in lexicon("en").concepts for form in forms} | set(lexicon("en").fillers)
    for line in lines:
        source = line["language"].split("-")[0]
        assert _script(line["query"]) == _SCRIPT_NAMES[SCRIPTS[source]]
        for passage in line["pos"] + line["neg"]:
            assert set(re.findall(r"\w+", passage)) <= english, passage
        if source in SPACED:
            query_words = re.findall(r"\w+", line["query"])
            lex = lexicon(source)
            own = {form for forms in lex.concepts for form in forms} | set(lex.fillers) | set(lex.question_words)
            assert set(query_words) <= own and not set(query_words) <= english, line["query"]
            to_english = dictionary(source, "en")
            translated = {_concepts(to_english[w], "en").pop() for w in query_words if w in to_english}
            assert translated and translated <= _concepts(line["pos"][0], "en"), line


@pytest.mark.parametrize("language", LANGUAGES)
def test_dev_split_is_consistent_beir(assets, language):
    corpus, queries, qrels = _dev(assets.dev_sets[language])
    doc_ids, query_ids = [d["_id"] for d in corpus], [q["_id"] for q in queries]
    assert len(set(doc_ids)) == len(doc_ids) and len(set(query_ids)) == len(query_ids)
    assert all(set(d) == {"_id", "title", "text"} and d["text"] for d in corpus)
    assert all(set(q) == {"_id", "text"} and q["text"] for q in queries)
    assert all(q in query_ids and d in doc_ids and s in {"1", "2"} for q, d, s in qrels)
    grades = Counter((q, s) for q, _, s in qrels)
    assert all(grades[(q, "2")] >= 1 for q in query_ids), "every query has a fully relevant document"
    assert sum(s == "1" for _, _, s in qrels) >= 10, "graded (partial) judgments exist"
    if language in SPACED:  # judgments equal concept coverage over the whole corpus
        judged = {(q, d): int(s) for q, d, s in qrels}
        for query in queries:
            asked = frozenset(_concepts(query["text"], language))
            for doc in corpus:
                grade = relevance(asked, frozenset(_concepts(doc["text"], language)))
                assert judged.get((query["_id"], doc["_id"]), 0) == grade


def test_dev_texts_are_disjoint_from_training(assets):
    train_passages, train_queries = set(), set()
    for path in assets.train_files:
        for line in _jsonl(path):
            train_queries.add(line["query"])
            train_passages.update(line["pos"] + line["neg"])
    for folder in assets.dev_sets.values():
        corpus, queries, _ = _dev(folder)
        assert not {d["text"] for d in corpus} & train_passages
        assert not {q["text"] for q in queries} & train_queries


def test_tokenizer_is_xlmr_style(assets):
    tok = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    assert type(tok).__name__ == "XLMRobertaTokenizer"
    assert (tok.cls_token_id, tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.sep_token_id) == (0, 0, 1, 2, 2)
    assert tok.unk_token_id == 3 and tok.mask_token_id == len(tok) - 1
    assert 2000 <= len(tok) <= 4000 and tok.model_max_length == 8192 and tok.padding_side == "right"
    batch = tok(["some text about the river", "river"], padding=True)
    first, second = batch["input_ids"]
    assert first[0] == 0 and first[-1] == 2 and second[0] == 0
    assert second[second.index(2) + 1 :] == [1] * (len(second) - second.index(2) - 1)
    assert batch["attention_mask"][1] == [1 if i != 1 else 0 for i in second]
    pair = tok("river", "bridge")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3 and pair[-1] == 2
    for lang in LANGUAGES:
        line = _jsonl(assets.train_dir / f"{lang}.jsonl")[0]
        for text in [line["query"], *line["pos"], *line["neg"]]:
            ids = tok(text)["input_ids"]
            assert 3 not in ids, (lang, text)
            assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok("Brücke Fluss")["input_ids"]) == ["<s>", "▁Brücke", "▁Fluss", "</s>"]


def test_ensure_is_idempotent_and_quick(assets):
    stamp = assets.root / assets_module.STAMP
    before = stamp.stat().st_mtime_ns
    start = time.perf_counter()
    again = ensure_default_assets(assets.root.parent, seed=0)
    assert time.perf_counter() - start < 1.0
    assert again == assets and stamp.stat().st_mtime_ns == before


def test_interrupted_build_leaves_no_folder(tmp_path, monkeypatch):
    def broken(out_dir, seed=0):
        (Path(out_dir) / "train").mkdir()
        (Path(out_dir) / "train" / "en.jsonl").write_text("{}\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(assets_module, "build_assets", broken)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_assets(tmp_path, seed=3)
    assert list(tmp_path.iterdir()) == []


def test_changed_generator_writes_new_folder(tmp_path, monkeypatch):
    built = []

    def fake(out_dir, seed=0):
        built.append(seed)
        (Path(out_dir) / assets_module.STAMP).write_text("{}")
        return assets_module._paths(Path(out_dir))

    monkeypatch.setattr(assets_module, "build_assets", fake)
    monkeypatch.setattr(assets_module, "generator_version", lambda: "aaaaaaaaaaaa")
    old = ensure_default_assets(tmp_path, seed=5)
    assert ensure_default_assets(tmp_path, seed=5) == old and built == [5]
    monkeypatch.setattr(assets_module, "generator_version", lambda: "bbbbbbbbbbbb")
    new = ensure_default_assets(tmp_path, seed=5)
    assert new.root != old.root and built == [5, 5]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["synthetic-seed5-aaaaaaaaaaaa", "synthetic-seed5-bbbbbbbbbbbb"]


def test_cli_prints_paths(assets, capsys):
    assets_cli([str(assets.root.parent)])
    out = capsys.readouterr().out
    for path in (assets.train_dir, assets.dev_dir, assets.tokenizer_dir):
        assert str(path) in out
