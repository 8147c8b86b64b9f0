"""Every bad input is refused up front by name: data lines, compressed files, checkpoints, model folders, BEIR
folders, encode paths, config values; the console scripts print the message, not a traceback."""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_console
from test_sweeps import compose_job

from m3lit.data.errors import BadLineError, DataError
from m3lit.data.index import build_file_index
from m3lit.data.records import parse_record
from m3lit.eval.beir import BeirFormatError, load_beir
from m3lit.inference.embedder import M3Embedder
from m3lit.inference.export import export_bge_m3
from m3lit.inference.model_folder import EXPORT_MARKER, IncompleteModelError
from m3lit.runs.checkpointing import check_checkpoint_file
from m3lit.scale.nonfinite import NonFiniteLossError

LINE = {"query": "q", "pos": ["p"], "neg": ["n"]}


# ---------------------------------------------------------------- training data
@pytest.mark.parametrize("raw, field, message", [
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [NaN], "neg_scores": [0.1]}', "pos_scores[0]",
     "not a finite number"),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0], "neg_scores": [-Infinity]}', "neg_scores[0]",
     "not a finite number"),
    ('{"query": "q", "pos": [""], "neg": ["n"]}', "pos[0]", "empty string"),
    ('{"query": "q", "pos": ["p"], "neg": ["  "]}', "neg[0]", "empty string"),
])
def test_non_finite_scores_and_empty_texts_are_bad_lines(raw, field, message):
    with pytest.raises(BadLineError) as err:
        parse_record(raw, "train.jsonl", 7)
    assert err.value.field == field and message in str(err.value) and str(err.value).startswith("train.jsonl:7:")


@pytest.mark.parametrize("content", [b"plain text, not gzip\n", "truncated"])
def test_a_corrupt_or_truncated_gz_file_is_named_and_leaves_no_temporary_file(tmp_path, content):
    path = tmp_path / "data.jsonl.gz"
    if content == "truncated":
        full = gzip.compress((json.dumps(LINE) + "\n").encode() * 200)
        content = full[: len(full) // 2]
    path.write_bytes(content)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"data\.jsonl\.gz: cannot be read as gzip.*truncated, corrupt"):
        build_file_index(str(path), str(cache))
    assert not [p for p in (cache / "index").iterdir() if p.name.startswith(".tmp-")]


# ---------------------------------------------------------------- checkpoints
def test_a_checkpoint_that_cannot_be_one_is_refused(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.ckpt: the file is empty"):
        check_checkpoint_file(str(empty))
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="noise.ckpt: not a PyTorch checkpoint"):
        check_checkpoint_file(str(noise))
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_checkpoint_file(str(tmp_path / "missing.ckpt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a sharded"):
        check_checkpoint_file(str(tmp_path / "folder"))


# ---------------------------------------------------------------- model folders
def copy_model(src: str, dst: Path, drop: tuple[str, ...] = ()) -> str:
    shutil.copytree(src, dst)
    for name in drop:
        os.remove(dst / name)
    return str(dst)


@pytest.mark.parametrize("drop, message", [
    (("sparse_linear.pt",), r"missing sparse_linear.pt \(sparse head\)"),
    (("colbert_linear.pt",), r"missing colbert_linear.pt \(colbert head\)"),
    (("tokenizer.json",), "no tokenizer files"),
    (("config.json",), "not a model folder"),
    (("model.safetensors",), "no encoder weights"),
])
def test_an_incomplete_model_folder_is_refused_naming_what_is_missing(tiny_m3_dir, tmp_path, drop, message):
    folder = copy_model(tiny_m3_dir, tmp_path / "m", drop)
    with pytest.raises(IncompleteModelError, match=message):
        M3Embedder.from_pretrained(folder)


def test_fresh_heads_loads_a_folder_without_head_files_on_purpose(tiny_m3_dir, tmp_path):
    folder = copy_model(tiny_m3_dir, tmp_path / "m", ("colbert_linear.pt",))
    assert M3Embedder.from_pretrained(folder, fresh_heads=True).trained_heads == ("dense", "sparse")


def test_the_export_is_atomic_with_a_marker_and_an_interrupted_one_is_never_loaded(tiny_m3_dir, tmp_path,
                                                                                    monkeypatch):
    emb = M3Embedder.from_pretrained(tiny_m3_dir)
    out = tmp_path / "export"
    export_bge_m3(emb.model, emb.tokenizer, str(out))
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert {"model.safetensors", "sparse_linear.pt", "colbert_linear.pt", "tokenizer.json"} <= set(marker["files"])
    before = (out / "model.safetensors").read_bytes()

    def interrupted(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(emb.tokenizer), "save_pretrained", interrupted)
    with torch.no_grad():  # new weights: the interrupted export must leave the previous one intact
        for p in emb.model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        export_bge_m3(emb.model, emb.tokenizer, str(out))
    assert (out / "model.safetensors").read_bytes() == before  # the previous complete export is untouched
    leftovers = [p for p in tmp_path.iterdir() if ".incomplete-" in p.name]
    assert len(leftovers) == 1
    with pytest.raises(IncompleteModelError, match="an interrupted export"):
        M3Embedder.from_pretrained(str(leftovers[0]))
    monkeypatch.undo()
    (out / "sparse_linear.pt").write_bytes(b"x")  # a file changed after the export
    with pytest.raises(IncompleteModelError, match="sparse_linear.pt missing or not of the size"):
        M3Embedder.from_pretrained(str(out))


# ---------------------------------------------------------------- BEIR folders
def write_beir(folder: Path, corpus: list[dict], qrels: str) -> str:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a query"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return str(folder)


def test_an_empty_corpus_or_qrels_of_another_corpus_are_refused(tmp_path):
    with pytest.raises(BeirFormatError, match="corpus.jsonl: empty corpus"):
        load_beir(write_beir(tmp_path / "empty", [], "q1\td1\t1\n"))
    other = write_beir(tmp_path / "other", [{"_id": "d1", "text": "x"}], "q1\tzz9\t1\nq1\tzz8\t2\n")
    with pytest.raises(BeirFormatError, match="none of its 2 relevant judgment.*'zz9'.*do not belong together"):
        load_beir(other)


# ---------------------------------------------------------------- console scripts
def test_m3lit_encode_checks_its_paths_and_input_before_loading_anything(tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    missing_model = str(tmp_path / "no_model")  # never reached: every case fails before the model loads
    cases = [
        ((str(texts), str(texts)), "is the input file"),
        ((str(texts), str(tmp_path / "no" / "out.jsonl")), "does not exist"),
        ((str(texts), str(tmp_path)), "is a folder"),
        ((str(empty), str(tmp_path / "out.jsonl")), "no texts"),
    ]
    for (inp, out), message in cases:
        proc = run_console("m3lit-encode", missing_model, inp, out, cwd=tmp_path, check=False)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert texts.read_text().startswith('{"id": "a"')


def test_m3lit_eval_refuses_an_incomplete_folder_cleanly(tiny_m3_dir, tmp_path):
    folder = copy_model(tiny_m3_dir, tmp_path / "m", ("sparse_linear.pt",))
    proc = run_console("m3lit-eval", f"model_path={folder}", f"beir={tmp_path}", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "m3lit-eval: error:" in proc.stderr and "missing sparse_linear.pt" in proc.stderr
    assert "Traceback" not in proc.stderr


TRAIN = ["callbacks=none", "logger=none", "checkpoint=none", "trainer.max_steps=2"]


def train(overrides: list[str], output_dir: Path):
    """``m3lit-train``'s ``run`` in-process on the composed config (output folder ``output_dir``)."""
    from m3lit.cli.train import run

    return run(compose_job(overrides, output_dir))


@pytest.mark.parametrize("args, message", [
    (["trainer.max_steps=abc"], "trainer.max_steps: expected int, got 'abc'"),
    (["data.passage_max_len=9000"], "data.passage_max_len=9000 (dataset"),
])
def test_config_errors_are_named_before_training(tmp_path, args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        train([*TRAIN, *args], tmp_path)


def test_m3lit_train_prints_the_message_not_a_traceback(tmp_path):
    proc = run_console("m3lit-train", *TRAIN, "trainer.max_steps=abc", cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "m3lit-train: error: trainer.max_steps: expected int, got 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    full = run_console("m3lit-train", *TRAIN, "trainer.max_steps=abc", cwd=tmp_path, check=False,
                       env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr


def test_skipping_non_finite_steps_stops_at_the_limit_and_exports_nothing(tmp_path):
    with pytest.raises(NonFiniteLossError, match=re.escape(
            "steps skipped for a non-finite loss in a row (limit train_step.nonfinite_max_consecutive=5)")):
        train(["callbacks=none", "logger=csv", "checkpoint=none", "trainer.max_steps=40",
               "trainer.log_every_n_steps=1", "optim.lr=1e6", "optim.warmup_steps=0", "train_step.nonfinite=skip"],
              tmp_path)
    assert not (tmp_path / "export").exists()
    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/version_*/metrics.csv")))))
    skipped = [r for r in rows if r.get("train/skipped") == "1.0"]
    # every completed skipped step is in the log as skipped with a NaN loss (the 5th stops the run mid-step)
    assert len(skipped) >= 4 and all(r["train/loss"] == "nan" for r in skipped)
    assert all(r["train/loss"] not in ("", "nan") for r in rows if r.get("train/skipped") == "0.0")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step run on a copy of the embedded default's training file, with its last checkpoint."""
    work = tmp_path_factory.mktemp("trained")
    from m3lit.cli.resolvers import default_assets_path

    shutil.copytree(default_assets_path("train_dir"), work / "train")
    args = ["callbacks=none", "logger=none", f"data.train={work / 'train'}", "export_dir=null"]
    train([*args, "trainer.max_steps=3"], work / "run")
    return work, args, work / "run" / "checkpoints" / "last.ckpt"


def test_resume_with_other_heads_names_the_difference(trained):
    work, args, last = trained
    message = ("different model configuration: heads: checkpoint ['dense', 'sparse', 'colbert'], this run "
               "['dense', 'sparse']")
    with pytest.raises(ValueError, match=re.escape(message)):
        train([*args, "trainer.max_steps=4", f"resume_from={last}", "model.heads.colbert=false"], work / "heads")


def test_resume_with_layer_decay_names_the_optimizer_groups(trained):
    work, args, last = trained
    message = "different model configuration: layer_decay_groups: checkpoint False, this run True"
    with pytest.raises(ValueError, match=re.escape(message)):
        train([*args, "trainer.max_steps=4", f"resume_from={last}", "optim.layer_decay=0.9"], work / "decay")


def test_resume_on_changed_data_fails_or_restarts_when_asked(trained, caplog):
    work, args, last = trained
    first = sorted((work / "train").glob("*.jsonl"))[0]
    with open(first, "a") as f:
        f.write(json.dumps({"query": "one more", "pos": ["line"], "neg": ["added"]}) + "\n")
    with pytest.raises(ValueError) as err:
        train([*args, "trainer.max_steps=4", f"resume_from={last}"], work / "changed")
    message = str(err.value)
    assert "the training data changed since the checkpoint" in message and first.name in message
    assert "usable lines" in message and "data.on_data_change=restart" in message
    train([*args, "trainer.max_steps=4", f"resume_from={last}", "data.on_data_change=restart"], work / "restart")
    assert "beginning a fresh epoch" in caplog.text
    assert (work / "restart" / "checkpoints" / "step-0000004.ckpt").exists()


def test_a_zero_byte_checkpoint_is_refused_before_training(trained, tmp_path):
    work, args, _ = trained
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape("the file is empty (0 bytes)")):
        train([*args, f"resume_from={empty}"], tmp_path)
