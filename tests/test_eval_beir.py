import json
import os

import pytest

from m3lit.eval.beir import BeirFormatError, find_beir_datasets, load_beir, load_beir_datasets


def write_dataset(folder, corpus, queries, qrels, split="test"):
    os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
    with open(os.path.join(folder, "corpus.jsonl"), "w") as f:
        for line in corpus:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    with open(os.path.join(folder, "queries.jsonl"), "w") as f:
        for line in queries:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    with open(os.path.join(folder, "qrels", f"{split}.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for row in qrels:
            f.write((row if isinstance(row, str) else "\t".join(map(str, row))) + "\n")


CORPUS = [{"_id": "d1", "title": "Title", "text": "first"}, {"_id": 2, "text": "second"}, {"_id": "d3", "text": "x"}]
QUERIES = [{"_id": "q1", "text": "one"}, {"_id": "q2", "text": "two"}, {"_id": "q3", "text": "unjudged"}]


def test_load_one_dataset(tmp_path):
    write_dataset(tmp_path / "ds", CORPUS, QUERIES, [("q1", "d1", 2), ("q1", "2", 0), ("q2", "d3", 1),
                                                    ("q9", "d1", 1), ("q2", "gone", 1)])
    ds = load_beir(str(tmp_path / "ds"))
    assert ds.name == "ds"
    assert ds.corpus == {"d1": "Title first", "2": "second", "d3": "x"}
    assert ds.queries == {"q1": "one", "q2": "two"}  # only judged queries are kept
    assert ds.qrels == {"q1": {"d1": 2, "2": 0}, "q2": {"d3": 1, "gone": 1}}  # q9 has no text: dropped
    assert ds.stats["qrels_dropped_queries"] == 1 and ds.stats["qrels_unknown_docs"] == 1


def test_split_picks_qrels_file_and_lists_available(tmp_path):
    write_dataset(tmp_path, CORPUS, QUERIES, [("q1", "d1", 1)], split="dev")
    assert load_beir(str(tmp_path), split="dev").qrels == {"q1": {"d1": 1}}
    with pytest.raises(FileNotFoundError, match=r"test\.tsv.*available splits: \['dev'\]"):
        load_beir(str(tmp_path), split="test")


def test_folder_of_folders(tmp_path):
    for name in ("b", "a", "nested/c"):
        write_dataset(tmp_path / name, CORPUS, QUERIES, [("q1", "d1", 1)])
    os.makedirs(tmp_path / "empty")
    assert list(find_beir_datasets(str(tmp_path))) == ["a", "b", "nested/c"]
    loaded = load_beir_datasets(str(tmp_path), names=["nested/c", "a"])
    assert [d.name for d in loaded] == ["nested/c", "a"]
    assert list(find_beir_datasets(str(tmp_path / "a"))) == ["a"]
    with pytest.raises(FileNotFoundError, match="not found"):
        load_beir_datasets(str(tmp_path), names=["zz"])
    with pytest.raises(FileNotFoundError, match="neither a BEIR dataset"):
        find_beir_datasets(str(tmp_path / "empty"))


def test_max_queries(tmp_path):
    write_dataset(tmp_path, CORPUS, QUERIES, [("q2", "d1", 1), ("q1", "d1", 1)])
    ds = load_beir(str(tmp_path), max_queries=1)
    assert list(ds.queries) == ["q1"] and list(ds.qrels) == ["q1"]


@pytest.mark.parametrize("corpus, qrels, pattern", [
    (CORPUS[:1] + ['{"_id": "d2", "text": "broken'], [("q1", "d1", 1)], r"corpus\.jsonl:2: invalid JSON"),
    (CORPUS[:2] + [{"text": "no id"}], [("q1", "d1", 1)], r"corpus\.jsonl:3: missing field '_id'"),
    (CORPUS[:1] + [{"_id": "d2", "text": 5}], [("q1", "d1", 1)], r"corpus\.jsonl:2: field 'text' must be a string"),
    (CORPUS + [{"_id": "d1", "text": "dup"}], [("q1", "d1", 1)], r"corpus\.jsonl:4: field '_id': duplicate"),
    (CORPUS, [("q1", "d1", 1), "q1\td2"], r"qrels/test\.tsv:3: expected 3 tab-separated fields"),
    (CORPUS, [("q1", "d1", "high")], r"qrels/test\.tsv:2: field 'score' must be an integer, got 'high'"),
    (CORPUS, [("q1", "d1", 1.5)], r"qrels/test\.tsv:2: field 'score' must be an integer"),
    (CORPUS, [("q1", "d1", 1), ("q1", "d1", 2)], r"qrels/test\.tsv:3: pair .* judged twice"),
    (CORPUS, [("q1", "", 1)], r"qrels/test\.tsv:2: field 'corpus-id' is empty"),
])
def test_malformed_input_names_file_line_field(tmp_path, corpus, qrels, pattern):
    write_dataset(tmp_path, corpus, QUERIES, qrels)
    with pytest.raises(BeirFormatError, match=pattern):
        load_beir(str(tmp_path))


def test_missing_files(tmp_path):
    write_dataset(tmp_path, CORPUS, QUERIES, [("q1", "d1", 1)])
    os.remove(tmp_path / "queries.jsonl")
    with pytest.raises(FileNotFoundError, match="missing queries.jsonl"):
        load_beir(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_beir(str(tmp_path / "nope"))


def test_no_judged_query_is_an_error(tmp_path):
    write_dataset(tmp_path, CORPUS, QUERIES, [("q7", "d1", 1)])
    with pytest.raises(BeirFormatError, match="no judged query"):
        load_beir(str(tmp_path))
