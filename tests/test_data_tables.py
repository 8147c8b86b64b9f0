"""Training data as Hugging Face ``datasets`` keep it — parquet and arrow files, ``save_to_disk`` folders, hub
names — gives exactly the batches of the same lines as jsonl, resumes exactly, and bad rows are named."""
import json
import shutil

import datasets
import lightning as L
import pytest
from conftest import run_console
from lightning.pytorch.callbacks import ModelCheckpoint
from test_data_resume import Recorder

from m3lit.cli.resolvers import default_assets_path
from m3lit.data import M3DataModule
from m3lit.data.errors import BadLineError, DataError
from m3lit.data.synthetic import synthetic_lines, write_jsonl

LINES = {"de": list(synthetic_lines(40, language="de", seed=1, passage_words=(3, 30))),
         "fr": list(synthetic_lines(30, language="fr", seed=2, scores=True, passage_words=(3, 30)))}


def as_dataset(lines) -> datasets.Dataset:
    return datasets.Dataset.from_list(lines)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same two datasets as a jsonl folder, a parquet folder, arrow files, saved Dataset / DatasetDict folders."""
    root = tmp_path_factory.mktemp("tables")
    for sub in ("jsonl", "parquet", "arrow", "saved", "dict"):
        (root / sub).mkdir()
    for name, lines in LINES.items():
        write_jsonl(root / "jsonl" / f"{name}.jsonl", lines)
        ds = as_dataset(lines)
        ds.to_parquet(str(root / "parquet" / f"{name}.parquet"))
        ds.save_to_disk(str(root / "saved" / name))
        (arrow,) = (root / "saved" / name).glob("*.arrow")
        shutil.copy(arrow, root / "arrow" / f"{name}.arrow")
        datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(root / "dict" / name))
    return root


def make(train, tokenizer, cache, **kw):
    kw = {"batch_size": 4, "bucket_boundaries": [0, 64, 128, 8192], "group_size": 3, "passage_max_len": 128,
          "query_max_len": 32, "cache_dir": str(cache), **kw}
    dm = M3DataModule(train, tokenizer, seed=7, **kw)
    dm.setup("fit")
    return dm


def batches(dm):
    out = []
    for b in dm.train_dataloader():
        m = b["meta"]
        out.append((m["dataset"], m["bucket"], tuple(m["rows"]), b["queries"]["input_ids"].tolist(),
                    b["passages"]["input_ids"].tolist(), None if b.get("teacher_scores") is None
                    else b["teacher_scores"].tolist()))
    return out


@pytest.mark.parametrize("layout", ["parquet_folder", "parquet_files", "arrow_files", "saved_folders",
                                    "dataset_dicts", "mapping_entries"])
def test_table_sources_give_the_batches_of_the_jsonl(layout, sources, tokenizer, tmp_path):
    train = {"parquet_folder": str(sources / "parquet"),
             "parquet_files": [str(sources / "parquet" / f"{n}.parquet") for n in LINES],
             "arrow_files": [str(sources / "arrow" / f"{n}.arrow") for n in LINES],
             "saved_folders": [str(sources / "saved" / n) for n in LINES],
             "dataset_dicts": [str(sources / "dict" / n) for n in LINES],          # their train split
             "mapping_entries": [{"path": str(sources / "saved" / n), "name": n, "weight": 1.0} for n in LINES]}[layout]
    want = batches(make(str(sources / "jsonl"), tokenizer, tmp_path / "c1"))
    got_dm = make(train, tokenizer, tmp_path / "c2")
    assert sorted(v.name for v in got_dm._load_views()) == ["de", "fr"]
    assert batches(got_dm) == want and len(want) > 10


def test_per_dataset_options_apply_to_a_table_source(sources, tokenizer, tmp_path):
    dm = make([{"path": str(sources / "parquet" / "de.parquet"), "group_size": 2, "query_max_len": 8}], tokenizer,
              tmp_path)
    for b in batches(dm):
        assert len(b[4]) == 2 * len(b[3]) and max(map(len, b[3])) <= 8


def fit(train, tokenizer, tmp_path, ckpt_dir, resume=None, max_steps=8):
    dm = M3DataModule(train, tokenizer, seed=5, group_size=3, batch_size=[3, 2], bucket_boundaries=[0, 80, 512],
                      passage_max_len=128, query_max_len=32, cache_dir=str(tmp_path / "cache"))
    model = Recorder()
    ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ckpt], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    return model.seen


def test_resume_from_a_parquet_run_is_exact(sources, tokenizer, tmp_path):
    train = str(sources / "parquet")
    full = fit(train, tokenizer, tmp_path, tmp_path / "full")
    resumed = fit(train, tokenizer, tmp_path, tmp_path / "resumed", resume=str(tmp_path / "full" / "step=3.ckpt"))
    assert resumed == full[3:] and len(full) == 8


def test_a_bad_row_is_named_by_file_and_row(tmp_path, tokenizer):
    lines = list(synthetic_lines(6, language="de", seed=1))
    lines[4] = {**lines[4], "pos": []}
    path = tmp_path / "bad.parquet"
    as_dataset(lines).to_parquet(str(path))
    with pytest.raises(BadLineError, match=rf"{path}: row 4: field 'pos': empty list"):
        make(str(path), tokenizer, tmp_path / "cache")
    dm = make(str(path), tokenizer, tmp_path / "cache", skip_bad_lines=True, group_size=2)
    assert sum(len(b[2]) for b in batches(dm)) == 5  # the other rows train


def test_unreadable_sources_are_named(tmp_path, tokenizer, sources):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match=rf"{broken}: cannot be read as a dataset"):
        make(str(broken), tokenizer, tmp_path / "cache")
    two = tmp_path / "two_splits"
    datasets.DatasetDict({"a": as_dataset(LINES["de"]), "b": as_dataset(LINES["de"])}).save_to_disk(str(two))
    with pytest.raises(DataError, match=r"splits \['a', 'b'\] and no 'train'"):
        make(str(two), tokenizer, tmp_path / "cache")


def test_hub_names_load_through_datasets(monkeypatch, sources, tokenizer, tmp_path):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return as_dataset(LINES["de"])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dm = make(["hf://someone/debdesc@de:validation"], tokenizer, tmp_path / "cache")
    assert calls and set(calls) == {("someone/debdesc", "de", "validation")}
    assert [v.name for v in dm._load_views()] == ["debdesc-de-validation"]
    want = make(str(sources / "jsonl" / "de.jsonl"), tokenizer, tmp_path / "c2")
    assert [b[2:] for b in batches(dm)] == [b[2:] for b in batches(want)]
    assert dm.fingerprint()["datasets"]["debdesc-de-validation"]["files"][0][0] == "hf://someone/debdesc@de:validation"


def test_installed_train_on_parquet(tmp_path):
    """m3lit-train with ``data.train`` a parquet file, as a user runs it."""
    rows = [json.loads(line) for line in open(f"{default_assets_path('train_dir')}/en.jsonl")]
    as_dataset(rows).to_parquet(str(tmp_path / "en.parquet"))
    proc = run_console("m3lit-train", f"data.train=[{tmp_path / 'en.parquet'}]", "trainer.max_steps=2", "logger=csv",
                       "callbacks=none", cwd=tmp_path)
    assert "exported: " in proc.stdout
    output = proc.stdout + proc.stderr  # the defaults say what they chose for this machine, and why
    assert "trainer.precision=auto: " in output and "train_step.encoding.packing=auto: on" in output
