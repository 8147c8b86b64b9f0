"""m3lit-mine: the selection rules on hand-made rankings, and the installed console script on a real checkpoint —
its negatives are the brute-force best-scoring non-positives, its scores the ensemble of the heads."""
import gzip
import json
import random

import numpy as np
import pytest
from conftest import run_console

from m3lit import M3Embedder
from m3lit.data.records import parse_record
from m3lit.mining.corpus import corpus_from_training_file, load_corpus, normalise
from m3lit.mining.selection import SelectionRules, select_negatives

WORDS = ("river stone lamp garden music paper engine window winter coffee market silver bridge forest doctor "
         "letter planet yellow summer island castle button dragon mirror violin tiger rocket orange").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    """30 lines, each a query, one positive sharing its words and 2 unrelated negatives; two lines carry scores."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("mine") / "train.jsonl"
    with open(path, "w") as f:
        for i in range(30):
            query = sentence(rng, 4)
            pos = f"{query} {sentence(rng, 6)}"
            line = {"query": query, "pos": [pos], "neg": [sentence(rng, 10), sentence(rng, 10)],
                    "language": "en", "id": i}
            if i < 2:
                line |= {"pos_scores": [1.0], "neg_scores": [0.1, 0.2]}
            f.write(json.dumps(line) + "\n")
            if i == 5:
                f.write("\n")  # blank lines are skipped
    return path


def read_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------------- selection rules
def choose(ranking, scores, rules, positive_ids=(), positive_score=10.0, texts=None, positives=("the positive",),
           query="the query", seed=0):
    texts = texts or {i: f"passage number {i}" for i in range(100)}
    return select_negatives(np.array(ranking), np.array(scores, dtype=np.float32), positive_ids, positive_score,
                            rules, np.random.default_rng(seed), texts.__getitem__, positives, query, len(texts))


def test_range_and_top_sampling_keep_rank_order():
    rules = SelectionRules(negatives=3, rank_range=(2, 8), sample="top", relative_margin=None)
    got = choose(list(range(20, 40)), np.linspace(9, 1, 20), rules)
    assert got.chosen == [22, 23, 24] and got.ranks == [2, 3, 4] and got.filled == 0


def test_random_sampling_is_seeded_and_stays_in_range():
    rules = SelectionRules(negatives=3, rank_range=(2, 8), relative_margin=None)
    a = choose(list(range(20, 40)), np.linspace(9, 1, 20), rules, seed=1)
    b = choose(list(range(20, 40)), np.linspace(9, 1, 20), rules, seed=1)
    assert a.chosen == b.chosen and all(2 <= r < 8 for r in a.ranks) and a.ranks == sorted(a.ranks)
    draws = {tuple(choose(list(range(20, 40)), np.linspace(9, 1, 20), rules, seed=s).chosen) for s in range(10)}
    assert len(draws) > 1


def test_positives_query_and_near_duplicates_are_never_negatives():
    texts = {i: f"passage number {i}" for i in range(100)}
    texts[1] = "The  POSITIVE"                           # the positive, differently spaced and cased
    texts[2] = "the query"                               # the query itself
    texts[3] = "the positive!"                           # a near-duplicate (3-gram Jaccard ≥ 0.75)
    rules = SelectionRules(negatives=5, rank_range=(0, 6), sample="top", relative_margin=None, near_duplicate=0.75,
                           fill="none")
    got = choose([0, 1, 2, 3, 4, 5], [6, 5, 4, 3, 2, 1], rules, positive_ids=[0], texts=texts)
    assert got.chosen == [4, 5]
    assert got.removed == {"positive": 1, "duplicate": 3, "margin": 0}


@pytest.mark.parametrize("margins, kept", [((0.5, None), [3, 4, 5]),      # s < 5 - 0.5
                                           ((None, 0.2), [4, 5]),         # s < 5 * 0.8 = 4
                                           ((0.5, 0.2), [4, 5])])         # both: the stricter
def test_absolute_and_relative_margins_drop_likely_false_negatives(margins, kept):
    rules = SelectionRules(negatives=3, rank_range=(0, 6), sample="top", margin=margins[0],
                           relative_margin=margins[1], fill="none")
    got = choose([0, 1, 2, 3, 4, 5], [6.0, 5.5, 4.5, 4.4, 3.0, 2.0], rules, positive_score=5.0)
    assert got.chosen == kept[:3]
    assert got.removed["margin"] == 6 - len(kept)


def test_too_few_candidates_are_filled_from_outside_the_ranking_or_left_short():
    texts = {i: f"passage number {i}" for i in range(12)}
    rules = SelectionRules(negatives=4, rank_range=(0, 3), sample="top", relative_margin=None)
    got = choose([0, 1, 2], [3, 2, 1], rules, positive_ids=[0, 7], texts=texts)
    assert got.chosen[:2] == [1, 2] and got.filled == 2 and got.ranks[2:] == [-1, -1]
    assert not set(got.chosen[2:]) & {0, 1, 2, 7}
    short = choose([0, 1, 2], [3, 2, 1], SelectionRules(negatives=4, rank_range=(0, 3), fill="none",
                                                        relative_margin=None), positive_ids=[0], texts=texts)
    assert short.chosen == [1, 2]


def test_bad_rules_are_refused():
    for kwargs, word in [({"rank_range": (5, 5)}, "range"), ({"negatives": 0}, "negatives"),
                         ({"sample": "best"}, "sample"), ({"relative_margin": 1.5}, "relative_margin")]:
        with pytest.raises(ValueError, match=word):
            SelectionRules(**kwargs)


def test_corpus_is_every_passage_once(train_file, tmp_path):
    corpus = corpus_from_training_file(str(train_file))
    lines = read_lines(train_file)
    texts = {normalise(t) for line in lines for t in line["pos"] + line["neg"]}
    assert len(corpus) == len(texts) and {normalise(t) for t in corpus.texts} == texts
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: field 'text'"):
        load_corpus(str(bad))


# ------------------------------------------------------------------------------------------- the console script
def brute_force_dense_top(embedder, lines, corpus_texts, depth):
    q = embedder.encode([line["query"] for line in lines], max_length=64, return_sparse=False,
                        return_colbert=False)["dense"]
    d = embedder.encode(corpus_texts, max_length=64, return_sparse=False, return_colbert=False)["dense"]
    order = np.argsort(-(q @ d.T), axis=1, kind="stable")
    return [[corpus_texts[j] for j in row if corpus_texts[j] not in line["pos"]][:depth]
            for row, line in zip(order, lines)]


def test_installed_mine_dense_top_equals_brute_force(train_file, tiny_m3_dir, tmp_path):
    out = tmp_path / "mined.jsonl.gz"
    proc = run_console("m3lit-mine", f"model_path={tiny_m3_dir}", f"data={train_file}", f"output={out}",
                       "mode=dense", "range=[0,6]", "negatives=3", "sample=top", "relative_margin=null",
                       "near_duplicate=null", "query_max_length=64", "passage_max_length=64", "dense_backend=torch",
                       cwd=tmp_path)
    assert "mined 30 lines" in proc.stdout and f"written: {out}" in proc.stdout
    got, source = read_lines(out), read_lines(train_file)
    assert len(got) == 30
    corpus = corpus_from_training_file(str(train_file)).texts
    want = brute_force_dense_top(M3Embedder.from_pretrained(tiny_m3_dir), source, corpus, 3)
    for line, orig, top in zip(got, source, want):
        parse_record(json.dumps(line), "mined", 1)                # a valid training line
        assert line["neg"] == top                                 # the best non-positive passages, rank order
        assert {k: v for k, v in line.items() if k != "neg"} == {
            k: v for k, v in orig.items() if k not in ("neg", "pos_scores", "neg_scores")}


def test_installed_mine_hybrid_with_scores_and_a_beir_corpus(train_file, tiny_m3_dir, tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    source = read_lines(train_file)
    rng = random.Random(1)
    with open(beir / "corpus.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": sentence(rng, 8)}) + "\n")
        f.write(json.dumps({"_id": "p0", "title": "", "text": source[0]["pos"][0]}) + "\n")  # a positive inside
    out = tmp_path / "mined.jsonl"
    run_console("m3lit-mine", f"model_path={tiny_m3_dir}", f"data={train_file}", f"output={out}",
                f"corpus={beir}", "mode=hybrid", "range=[0,10]", "negatives=4", "scores=true",
                "query_max_length=64", "passage_max_length=64", "chunk_lines=7", cwd=tmp_path)
    got = read_lines(out)
    corpus = set(load_corpus(str(beir)).texts)
    embedder = M3Embedder.from_pretrained(tiny_m3_dir)
    for line in got:
        assert len(line["neg"]) == 4 and set(line["neg"]) <= corpus and line["pos"][0] not in line["neg"]
        assert len(line["pos_scores"]) == 1 and len(line["neg_scores"]) == 4
    # the scores are the ensemble Σ_h w_h s_h (dense 1, sparse 0.3, colbert 1) of each (query, passage) pair
    line = got[0]
    pairs = [(line["query"], t) for t in line["pos"] + line["neg"]]
    s = embedder.compute_score(pairs, max_query_length=64, max_passage_length=64)
    want = [d + 0.3 * sp + c for d, sp, c in zip(s["dense"], s["sparse"], s["colbert"])]
    np.testing.assert_allclose(line["pos_scores"] + line["neg_scores"], want, atol=1e-4)


def test_installed_mine_errors_name_the_file_line_and_key(train_file, tiny_m3_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(train_file.read_text().splitlines()[0] + "\n" + '{"query": "q", "pos": []}\n')
    common = (f"model_path={tiny_m3_dir}", f"output={tmp_path / 'o.jsonl'}")
    cases = [((f"data={bad}",), f"{bad}:2: field 'pos': empty list"),
             ((f"data={tmp_path / 'missing.jsonl'}",), "no such file"),
             ((f"data={train_file}", "+colour=red"), "unknown key(s) ['colour']"),
             ((f"data={train_file}", "mode=colbert"), "mode='colbert'"),
             ((f"data={train_file}", "range=[5,2]"), "range=[5, 2]")]
    for args, message in cases:
        proc = run_console("m3lit-mine", *common, *args, cwd=tmp_path, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert not (tmp_path / "o.jsonl").exists()                 # nothing half-written
    proc = run_console("m3lit-mine", f"model_path={tiny_m3_dir}", f"data={train_file}", f"output={train_file}",
                       cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "is the input file" in proc.stderr
