"""End to end: `m3lit-train` on the embedded default raises held-out nDCG@10 of every head and exports a model."""
import csv
import glob

import numpy as np
from conftest import exported_dir, run_console

from m3lit import M3Embedder

HEADS = ("dense", "sparse", "colbert", "all")


def test_default_training_improves_every_head_and_exports(tmp_path):
    proc = run_console("m3lit-train", "logger=csv", f"hydra.run.dir={tmp_path}", "trainer.max_steps=160",
                       "callbacks.retrieval_eval.every_n_steps=0", "callbacks.retrieval_eval.max_queries=30",
                       "callbacks.retrieval_eval.print_table=false", cwd=tmp_path)
    exported = [exported_dir(proc)]

    (metrics_file,) = glob.glob(str(tmp_path / "csv" / "*" / "metrics.csv"))
    rows = [r for r in csv.DictReader(open(metrics_file)) if r.get("eval/average/all/ndcg@10")]
    first, last = rows[0], rows[-1]
    assert int(first["step"]) == 0 and int(last["step"]) == 160
    for head in HEADS:
        before, after = float(first[f"eval/average/{head}/ndcg@10"]), float(last[f"eval/average/{head}/ndcg@10"])
        assert after > before + 0.05, (head, before, after)
    train_rows = [r for r in csv.DictReader(open(metrics_file)) if r.get("train/loss/total")]
    assert {"train/loss/dense", "train/loss/sparse", "train/loss/colbert", "train/loss/ensemble",
            "train/loss/distill", "teacher/w_sparse", "perf/tokens_per_s", "perf/step_s"} <= set(train_rows[0])
    step_seconds = [float(r["perf/step_s"]) for r in train_rows if r.get("perf/step_s")]
    assert step_seconds and all(0 < s < 60 for s in step_seconds)

    out = M3Embedder.from_pretrained(exported[0]).encode(["a query", "ένα έγγραφο"])
    assert out["dense"].shape[0] == 2 and np.allclose(np.linalg.norm(out["dense"], axis=1), 1.0, atol=1e-5)
