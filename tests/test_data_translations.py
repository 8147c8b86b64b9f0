"""Translations in the training data (``query_translation``, ``pos_translation``): validated with the file, line and
field; collated into the batch's ``views`` with the chosen positive's translation; absent lines add nothing."""
import csv
import glob
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_console

from m3lit.data.collate import collate_group_batch
from m3lit.data.errors import BadLineError
from m3lit.data.records import parse_record
from m3lit.data.sources import DatasetOptions
from m3lit.inference.embedder import load_tokenizer


def line(**fields) -> str:
    return json.dumps({"query": "q", "pos": ["p0", "p1"], "neg": ["n0", "n1", "n2"], **fields})


def test_translation_fields_are_read_and_checked():
    rec = parse_record(line(query_translation="q fr", pos_translation=["p0 fr", "p1 fr"]), "t.jsonl", 3)
    assert rec.query_translation == "q fr" and rec.pos_translation == ["p0 fr", "p1 fr"]
    assert parse_record(line(), "t.jsonl", 1).pos_translation is None
    for fields, field, why in [({"pos_translation": ["only one"]}, "pos_translation", "has 1 texts but 'pos' has 2"),
                               ({"query_translation": " "}, "query_translation", "empty string"),
                               ({"query_translation": 5}, "query_translation", "expected a string"),
                               ({"pos_translation": ["a", ""]}, "pos_translation[1]", "empty string")]:
        with pytest.raises(BadLineError) as err:
            parse_record(line(**fields), "t.jsonl", 7)
        assert str(err.value).startswith(f"t.jsonl:7: field '{field}': {why}"), str(err.value)


def test_the_view_swaps_the_query_and_the_chosen_positive_where_translated(tiny_m3_dir):
    tok = load_tokenizer(tiny_m3_dir)
    opts = DatasetOptions(group_size=3, query_max_len=16, passage_max_len=16)
    records = [parse_record(line(query="alpha", pos=["beta", "gamma"], query_translation="delta",
                                 pos_translation=["epsilon", "zeta"]), "t", 1),
               parse_record(line(query="eta", pos=["theta"]), "t", 2)]  # no translation: the same texts
    rngs = [np.random.default_rng(s) for s in (0, 1)]
    batch, stats = collate_group_batch(records, rngs, opts, tok)
    positive = np.random.default_rng(0).integers(2)  # the first line's chosen positive (choose_group's first draw)

    def texts(features):
        return tok.batch_decode(features["input_ids"], skip_special_tokens=True)

    assert texts(batch["views"]["queries"]) == ["delta", "eta"] and texts(batch["queries"]) == ["alpha", "eta"]
    original, view = texts(batch["passages"]), texts(batch["views"]["passages"])
    assert original[0] == ["beta", "gamma"][positive] and view[0] == ["epsilon", "zeta"][positive]
    assert view[1:] == original[1:]  # negatives and the untranslated line unchanged
    assert stats["translated_queries"] == 1 and stats["translated_positives"] == 1
    plain, stats = collate_group_batch(records[1:], rngs[1:], opts, tok)
    assert "views" not in plain and stats["translated_queries"] == 0


def test_paired_debdesc_style_files_train_with_the_translation_view(tmp_path):
    """sweeps/tools/pair_translations.py on files laid out as debdesc's, then the installed m3lit-train with
    ``+scheme=views_translation`` on its output: the batches carry translated views (logged share > 0)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    words = [f"w{i}" for i in range(200)]

    def text(i: int, lang: str, n: int) -> str:
        return " ".join(f"{lang}{words[(i * 7 + k) % 200]}" for k in range(n))

    files = {"en": [(text(i, "en", 3), text(i, "en", 12)) for i in range(24)],
             "xx": [(text(i, "xx", 3), text(i, "xx", 12)) for i in range(24)],
             "xling_xx-en": [(text(i, "xx", 3), text(i, "en", 12)) for i in range(0, 24, 2)]}
    for name, pairs in files.items():
        with open(raw / f"{name}.jsonl", "w") as f:
            for i, (q, p) in enumerate(pairs):
                negs = [pairs[(i + k) % len(pairs)][1] for k in (1, 2, 3)]
                f.write(json.dumps({"query": q, "pos": [p], "neg": negs}) + "\n")
    paired = tmp_path / "paired"
    tool = Path(__file__).parents[1] / "sweeps" / "tools" / "pair_translations.py"
    out = subprocess.run([sys.executable, str(tool), str(raw), str(paired)], capture_output=True, text=True,
                         check=True).stdout
    counts = {line.split()[0]: line.split()[1::2] for line in out.splitlines()}
    assert counts == {"en": ["24", "12", "0"], "xx": ["24", "0", "12"], "xling_xx-en": ["12", "12", "12"]}, out
    lines = [json.loads(x) for x in open(paired / "xx.jsonl")]
    assert lines[0]["pos_translation"] == [files["en"][0][1]] and "pos_translation" not in lines[1]
    run_console("m3lit-train", "+scheme=views_translation", f"data.train={paired}", "data.batch_size=4",
                "data.group_size=2", "trainer.max_steps=4", "trainer.log_every_n_steps=1", "callbacks=none",
                "logger=csv", "checkpoint=none", "export_dir=null", "hydra.run.dir=run", cwd=tmp_path)
    metrics = sorted(glob.glob(str(tmp_path / "run" / "**" / "metrics.csv"), recursive=True))
    rows = [r for r in csv.DictReader(open(metrics[-1])) if r.get("batch/translated_positives")]
    assert len(rows) == 4 and max(float(r["batch/translated_positives"]) for r in rows) > 0
    assert all(float(r["train/loss/distill"]) > 0 for r in rows if r.get("train/loss/distill"))
