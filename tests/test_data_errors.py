"""Bad input: errors name file, line and field; skip_bad_lines counts and reports; empty datasets are errors."""
import json

import pytest

from m3lit.data import BadLineError, DataConfigError, EmptyDatasetError, M3DataModule, parse_record
from m3lit.data.synthetic import synthetic_lines, write_jsonl

GOOD = {"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}


@pytest.mark.parametrize(
    "line, field, words",
    [
        ('{"query": "q", "pos": ["p"', "<json>", "malformed JSON"),
        ('["q", "p"]', "<json>", "JSON object"),
        ('{"pos": ["p"]}', "query", "missing"),
        ('{"query": 3, "pos": ["p"]}', "query", "expected a string, got int"),
        ('{"query": "q"}', "pos", "missing"),
        ('{"query": "q", "pos": []}', "pos", "empty list"),
        ('{"query": "q", "pos": "p"}', "pos", "expected a list"),
        ('{"query": "q", "pos": ["p", null]}', "pos[1]", "got NoneType"),
        ('{"query": "q", "pos": ["p"], "neg": ["n", 5]}', "neg[1]", "got int"),
        ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0, 2.0], "neg_scores": [0.1]}',
         "pos_scores", "has 2 scores but 'pos' has 1"),
        ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0], "neg_scores": []}',
         "neg_scores", "has 0 scores but 'neg' has 1"),
        ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0]}', "neg_scores", "missing"),
        ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": ["high"], "neg_scores": [0.1]}',
         "pos_scores[0]", "expected a number"),
        ('{"query": "q", "pos": ["p"], "prompt": 1}', "prompt", "expected a string"),
    ],
)
def test_parse_record_names_field(line, field, words):
    with pytest.raises(BadLineError) as err:
        parse_record(line, "data/x.jsonl", 12)
    assert err.value.field == field and err.value.line == 12
    assert str(err.value).startswith(f"data/x.jsonl:12: field '{field}'") and words in str(err.value)


def test_parse_record_accepts_good_line_with_scores():
    rec = parse_record(json.dumps({**GOOD, "pos_scores": [1], "neg_scores": [0.5, 0.25], "language": "de"}), "f", 1)
    assert rec.pos_scores == [1.0] and rec.neg_scores == [0.5, 0.25] and rec.language == "de"


def _bad_file(tmp_path, name="bad.jsonl"):
    # line numbers are 1-based; line 4 is blank (ignored), lines 3 and 6 are bad
    return write_jsonl(tmp_path / name, synthetic_lines(8, seed=0, n_neg=3),
                       raw_lines={2: '{"query": "q", "pos": [}', 3: "", 5: '{"query": "q", "pos": [1]}'})


def test_datamodule_raises_with_file_line_field(tmp_path, tokenizer):
    path = _bad_file(tmp_path)
    with pytest.raises(BadLineError) as err:
        M3DataModule(path, tokenizer, group_size=2, batch_size=2, cache_dir=str(tmp_path / "c")).setup("fit")
    assert err.value.path == path and err.value.line == 3 and err.value.field == "<json>"
    assert "2 bad line(s)" in str(err.value) and "skip_bad_lines" in str(err.value)


def test_gz_errors_name_the_gz_file(tmp_path, tokenizer):
    path = _bad_file(tmp_path, "bad.jsonl.gz")
    with pytest.raises(BadLineError) as err:
        M3DataModule(path, tokenizer, group_size=2, batch_size=2, cache_dir=str(tmp_path / "c")).setup("fit")
    assert err.value.path == path and err.value.line == 3


def test_skip_bad_lines_counts_and_reports(tmp_path, tokenizer, caplog):
    path = _bad_file(tmp_path)
    dm = M3DataModule(path, tokenizer, group_size=2, batch_size=2, skip_bad_lines=True, cache_dir=str(tmp_path / "c"))
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    (report,) = dm.bad_line_reports
    assert report.count == 2 and report.path == path
    assert report.examples[0].startswith(f"{path}:3: field '<json>'") and f"{path}:6: field 'pos[0]'" in report.examples[1]
    assert "skipped 2 bad line(s)" in caplog.text
    rows = sorted(r for b in dm.train_dataloader() for r in b["meta"]["rows"])
    assert rows == list(range(5))
    view = dm.views[0]
    lines = sorted(int(view.files[view.file_id[r]].line_no[view.file_row[r]]) for r in rows)
    assert lines == [1, 2, 5, 7, 8]


def test_missing_negatives_with_group_size(tmp_path, tokenizer):
    lines = list(synthetic_lines(4, seed=0, n_neg=2))
    lines[2]["neg"] = []
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(BadLineError, match=r"d.jsonl:3: field 'neg': no negatives, but group_size=4"):
        M3DataModule(path, tokenizer, group_size=4, batch_size=2, cache_dir=str(tmp_path / "c")).setup("fit")
    # group_size 1 needs no negatives
    dm = M3DataModule(path, tokenizer, group_size=1, batch_size=2, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["passages"]["input_ids"].shape[0] == 2


def test_scores_on_some_lines_only(tmp_path, tokenizer):
    lines = list(synthetic_lines(5, seed=0, n_neg=2, scores=True))
    del lines[3]["pos_scores"], lines[3]["neg_scores"]
    path = write_jsonl(tmp_path / "s.jsonl", lines)
    with pytest.raises(BadLineError, match=r"s.jsonl:4: field 'pos_scores': missing while the other lines"):
        M3DataModule(path, tokenizer, group_size=2, batch_size=2, cache_dir=str(tmp_path / "c")).setup("fit")


def test_dataset_empty_after_skipping_names_it(tmp_path, tokenizer):
    good = write_jsonl(tmp_path / "good.jsonl", synthetic_lines(4, seed=0, n_neg=2))
    bad = write_jsonl(tmp_path / "allbad.jsonl", [{}] * 3, raw_lines={0: "{", 1: "[]", 2: '{"query": "x"}'})
    with pytest.raises(EmptyDatasetError, match="dataset 'allbad'"):
        M3DataModule([good, bad], tokenizer, group_size=2, batch_size=2, skip_bad_lines=True,
                     cache_dir=str(tmp_path / "c")).setup("fit")


def test_bad_config(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", synthetic_lines(4, seed=0))
    with pytest.raises(DataConfigError, match="matches no file"):
        M3DataModule(str(tmp_path / "nope*.jsonl"), tokenizer)
    with pytest.raises(DataConfigError, match="3 entries but bucket_boundaries"):
        M3DataModule(path, tokenizer, bucket_boundaries=[0, 10, 20], batch_size=[1, 2, 3])
    with pytest.raises(DataConfigError, match="two datasets are named 'a'"):
        M3DataModule([path, path], tokenizer)
    with pytest.raises(DataConfigError, match="unknown option"):
        M3DataModule([{"path": path, "group_sise": 3}], tokenizer)
