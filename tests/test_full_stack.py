"""The whole stack as users run it, each through the installed ``m3lit-train`` from a temporary directory on the
embedded default: the real M3DataModule, M3LightningModule, retrieval-evaluation callback and export, on two
processes with DDP and with FSDP2; the trained export loaded by FlagEmbedding; heads that were off."""
import csv
import glob
import json
import os

import numpy as np
import pytest
from conftest import exported_dir, run_console
from test_eval_interop import TEXTS, flag_model_class

from m3lit import M3Embedder
from m3lit.cli.resolvers import default_assets_path

# a short run: real data module and evaluation callback (one language, a few queries), export at the end
SHORT = ["trainer.max_steps=4", "logger=csv", "callbacks.retrieval_eval.at_start=false",
         "callbacks.retrieval_eval.datasets=[en]", "callbacks.retrieval_eval.max_queries=5",
         "callbacks.retrieval_eval.print_table=false"]


def eval_rows(run_dir: str) -> list[dict]:
    (metrics,) = glob.glob(os.path.join(run_dir, "csv", "*", "metrics.csv"))
    return [r for r in csv.DictReader(open(metrics)) if r.get("eval/average/all/ndcg@10")]


@pytest.fixture(scope="module")
def ddp_export(tmp_path_factory):
    """Two DDP processes (gloo) with a ColBERT dimension of 32 ≠ hidden size 64."""
    work = tmp_path_factory.mktemp("ddp")
    proc = run_console("m3lit-train", "strategy=ddp", "trainer.devices=2", "model.colbert_dim=32",
                       f"hydra.run.dir={work}/run", *SHORT, cwd=work)
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # both processes trained
    assert "colbert_dim=32" in proc.stdout  # the note on loading it in FlagEmbedding
    rows = eval_rows(str(work / "run"))
    assert rows and int(rows[-1]["step"]) == 4
    return exported_dir(proc)


def test_ddp_run_exports_a_model_that_m3lit_eval_reads(ddp_export, tmp_path):
    assert json.load(open(os.path.join(ddp_export, "m3_config.json")))["colbert_dim"] == 32
    run_console("m3lit-eval", f"model_path={ddp_export}", f"beir={default_assets_path('dev_dir')}",
                "datasets=[de]", "max_queries=5", "output=r.json", "device=cpu", cwd=tmp_path)
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["de"]) == {"dense", "sparse", "colbert", "dense+sparse", "all", "stats"}


def test_flagembedding_loads_the_trained_export_with_equal_outputs(ddp_export):
    ours = M3Embedder.from_pretrained(ddp_export).encode(TEXTS, batch_size=2, max_length=48)
    flag_cls = flag_model_class()
    with pytest.raises(RuntimeError, match="size mismatch"):  # why the note tells colbert_dim
        flag_cls(ddp_export, use_fp16=False, devices="cpu")
    flag = flag_cls(ddp_export, use_fp16=False, devices="cpu", colbert_dim=32)
    theirs = flag.encode(TEXTS, batch_size=2, max_length=48, return_dense=True, return_sparse=True,
                         return_colbert_vecs=True)
    np.testing.assert_allclose(ours["dense"], theirs["dense_vecs"], atol=1e-5)
    for a, b in zip(ours["sparse"], theirs["lexical_weights"]):
        assert set(a) == {int(t) for t in b}
        np.testing.assert_allclose([a[t] for t in sorted(a)], [float(b[str(t)]) for t in sorted(a)], atol=1e-5)
    for a, b in zip(ours["colbert"], theirs["colbert_vecs"]):
        assert a.shape == b.shape and a.shape[1] == 32
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_fsdp_run_trains_evaluates_and_exports(tmp_path):
    proc = run_console("m3lit-train", "strategy=fsdp", "trainer.devices=2", f"hydra.run.dir={tmp_path}/run", *SHORT,
                       cwd=tmp_path)
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    rows = eval_rows(str(tmp_path / "run"))
    assert rows and 0.0 < float(rows[-1]["eval/average/all/ndcg@10"]) <= 1.0
    out = M3Embedder.from_pretrained(exported_dir(proc)).encode(TEXTS, max_length=32)
    assert np.isfinite(out["dense"]).all() and len(out["colbert"]) == len(TEXTS)


def test_heads_that_were_off_are_recorded_and_refused(tmp_path):
    proc = run_console("m3lit-train", "model.heads.colbert=false", f"hydra.run.dir={tmp_path}/run", *SHORT,
                       cwd=tmp_path)
    assert "colbert were not trained" in proc.stdout
    rows = eval_rows(str(tmp_path / "run"))  # the callback evaluated the trained heads and their hybrids
    assert "eval/en/colbert/ndcg@10" not in rows[-1] or not rows[-1]["eval/en/colbert/ndcg@10"]
    export = exported_dir(proc)
    assert json.load(open(os.path.join(export, "m3_config.json")))["heads"]["colbert"] is False
    model = M3Embedder.from_pretrained(export)
    assert model.trained_heads == ("dense", "sparse") and set(model.encode(["a b"])) == {"dense", "sparse"}
    with pytest.raises(ValueError, match="colbert head.* never trained"):
        model.encode(["a b"], return_colbert=True)
    run_console("m3lit-eval", f"model_path={export}", f"beir={default_assets_path('dev_dir')}", "datasets=[de]",
                "max_queries=5", "output=r.json", "device=cpu", cwd=tmp_path)
    assert set(json.loads((tmp_path / "r.json").read_text())["de"]) == {"dense", "sparse", "dense+sparse", "all",
                                                                        "stats"}
    bad = run_console("m3lit-eval", f"model_path={export}", f"beir={default_assets_path('dev_dir')}",
                      "heads=[colbert]", "hybrids=[]", cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "never trained" in bad.stderr


def test_a_directory_without_m3_config_has_the_heads_of_its_files(tiny_m3_dir, tmp_path):
    import shutil

    folder = tmp_path / "plain"
    shutil.copytree(tiny_m3_dir, folder)
    os.remove(folder / "colbert_linear.pt")
    assert not (folder / "m3_config.json").exists()
    with pytest.raises(FileNotFoundError, match="missing colbert_linear.pt"):  # refused unless asked for
        M3Embedder.from_pretrained(str(folder))
    assert M3Embedder.from_pretrained(str(folder), fresh_heads=True).trained_heads == ("dense", "sparse")
    assert M3Embedder.from_pretrained(tiny_m3_dir).trained_heads == ("dense", "sparse", "colbert")
