import csv
import os

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from test_eval_evaluate import FakeEncoder, make_dataset
from torch.utils.data import DataLoader, TensorDataset

from m3lit.eval.callback import RetrievalEvalCallback


class NoisyEncoder(FakeEncoder):
    """FakeEncoder whose dense vectors get less noisy as training advances."""

    def __init__(self, noise):
        super().__init__()
        self.noise = noise
        self.rng = np.random.default_rng(0)

    def encode(self, texts, **kw):
        out = super().encode(texts, **kw)
        if "dense" in out:
            out["dense"] = out["dense"] + self.noise * self.rng.standard_normal(out["dense"].shape).astype(np.float32)
        return out


class TinyModule(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.modes_seen = []

    def embedder(self):
        self.modes_seen.append(self.training)
        return NoisyEncoder(noise=2.0 / (1 + self.global_step))

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def beir_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir_cb")
    make_dataset(str(root / "aa"), seed=3)
    make_dataset(str(root / "bb"), seed=4, n_docs=20)
    return str(root)


def run_training(tmp_path, callback, max_steps=5):
    trainer = Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path)),
                      callbacks=[callback],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), log_every_n_steps=1)
    module = TinyModule()
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)
    trainer.fit(module, data)
    return trainer, module


def test_evaluates_at_start_every_n_steps_and_end(tmp_path, beir_root, capsys):
    cb = RetrievalEvalCallback(beir_root, every_n_steps=2, at_start=True, heads=["dense", "sparse"],
                               colbert_exhaustive_max_docs=0)
    trainer, module = run_training(tmp_path, cb)
    assert [step for step, _ in cb.history] == [0, 2, 4, 5]
    assert module.modes_seen == [False] * 4  # eval mode during evaluation
    assert module.training  # train mode restored
    scores = [cb.monitored(res) for _, res in cb.history]
    assert cb.monitor == "average/all/ndcg@10"
    assert cb.best_score == max(scores) and cb.best_step == [0, 2, 4, 5][scores.index(max(scores))]
    assert cb.best_path == os.path.join(str(tmp_path), "checkpoints", "best.ckpt")
    assert os.path.isfile(cb.best_path)
    assert torch.load(cb.best_path, weights_only=False)["global_step"] == cb.best_step
    # per-dataset per-mode metrics reached the logger
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    keys = set(rows[0])
    for key in ("eval/aa/dense/ndcg@10", "eval/bb/sparse/recall@100", "eval/average/all/mrr@10",
                "eval/average/dense+sparse/ndcg@10"):
        assert key in keys
    logged_steps = sorted({int(r["step"]) for r in rows if r.get("eval/average/all/ndcg@10")})
    assert logged_steps == [0, 2, 4, 5]
    out = capsys.readouterr().out
    assert "retrieval evaluation at step 0" in out and "retrieval evaluation summary" in out


def test_no_duplicate_evaluation_at_end_and_custom_monitor(tmp_path, beir_root):
    cb = RetrievalEvalCallback(beir_root, datasets=["bb"], every_n_steps=2, heads=["dense"], hybrids=None,
                               monitor="bb/dense/recall@100", save_best=False, print_table=False)
    run_training(tmp_path, cb, max_steps=4)
    assert [step for step, _ in cb.history] == [2, 4]
    assert list(cb.history[-1][1]) == ["bb", "average"]
    assert cb.best_path is None


def test_bad_arguments(beir_root):
    with pytest.raises(ValueError, match="mode"):
        RetrievalEvalCallback(beir_root, mode="up")
    with pytest.raises(ValueError, match="distributed"):
        RetrievalEvalCallback(beir_root, distributed="all")
    cb = RetrievalEvalCallback(beir_root, monitor="ndcg")
    with pytest.raises(ValueError, match="monitor"):
        cb.monitored({})


def test_held_out_test_queries_are_never_monitored_and_evaluated_once_at_the_end(tmp_path, beir_root):
    import json

    cb = RetrievalEvalCallback(beir_root, every_n_steps=2, at_start=True, heads=["dense", "sparse"],
                               colbert_exhaustive_max_docs=0, test_fraction=0.5, print_table=False)
    trainer, _ = run_training(tmp_path, cb)
    dev, test = cb.datasets_to_evaluate(), cb.test_datasets()
    for d, t in zip(dev, test):  # a partition of each dataset's 12 queries, both sides used, corpus shared
        assert set(d.qrels).isdisjoint(t.qrels) and len(d.qrels) + len(t.qrels) == 12 and d.qrels and t.qrels
        assert d.corpus is t.corpus
    assert [step for step, _ in cb.history] == [0, 2, 4, 5]  # the monitored evaluations: dev only
    assert cb.test_results is not None and set(cb.test_results) == {"aa", "bb", "average"}
    assert "test/aa/dense/ndcg@10" in trainer.callback_metrics and "eval/aa/dense/ndcg@10" in trainer.callback_metrics
    # the final dev values computed in the same pass as the test values equal a dev-only evaluation
    final = cb.history[-1][1]
    again = cb._run(trainer, trainer.lightning_module, dev)
    assert again["average"]["sparse"] == pytest.approx(final["average"]["sparse"])
    # files: one history line per evaluation (dev ×4, test ×1) and the per-query values of the last of each
    lines = [json.loads(line) for line in open(os.path.join(str(tmp_path), "eval_history.jsonl"))]
    assert [(line["step"], line["prefix"]) for line in lines] == [(0, "eval"), (2, "eval"), (4, "eval"),
                                                                    (5, "eval"), (5, "test")]
    per_query = json.load(open(os.path.join(str(tmp_path), "eval_per_query.json")))
    assert per_query["steps"] == {"eval": 5, "test": 5}
    test_aa = per_query["values"]["test"]["aa"]["sparse"]["ndcg@10"]
    assert set(test_aa) == set(test[0].qrels)
    assert sum(test_aa.values()) / len(test_aa) == pytest.approx(cb.test_results["aa"]["sparse"]["ndcg@10"])
    # the sparse head's health on each corpus: all-zero vectors and mean non-zero tokens per text
    sparse = NoisyEncoder(0.0).encode(list(dev[0].corpus.values()))["sparse"]
    sizes = [sum(1 for w in vec.values() if w > 0) for vec in sparse]
    assert float(trainer.callback_metrics["eval/aa/sparse/nnz"]) == pytest.approx(sum(sizes) / len(sizes))
    assert float(trainer.callback_metrics["eval/aa/sparse/zero_frac"]) == pytest.approx(
        sum(n == 0 for n in sizes) / len(sizes))
    assert "eval/average/sparse/nnz" in lines[-2]["metrics"]


def test_query_split_is_fixed_by_the_query_ids_and_keeps_both_sides(beir_root):
    from m3lit.eval.beir import load_beir, split_queries

    full = load_beir(os.path.join(beir_root, "aa"))
    dev, test = split_queries(full, 0.5)
    assert (dev.split, test.split) == ("test[not held out 0.5]", "test[held out 0.5]")
    # the held-out set of a query does not depend on the others: a subset splits the same way
    sub = load_beir(os.path.join(beir_root, "aa"), max_queries=6)
    sub_dev, sub_test = split_queries(sub, 0.5)
    assert set(sub_test.qrels) == set(test.qrels) & set(sub.qrels)
    assert split_queries(full, 0.5, seed=1)[1].qrels != test.qrels  # another seed, another slice
    tiny = load_beir(os.path.join(beir_root, "aa"), max_queries=2)
    for fraction in (0.01, 0.99):  # by chance one side would be empty: it gets the query nearest the threshold
        kept, held = split_queries(tiny, fraction)
        assert len(kept.qrels) == 1 and len(held.qrels) == 1
    with pytest.raises(ValueError, match="cannot be split"):
        split_queries(load_beir(os.path.join(beir_root, "aa"), max_queries=1), 0.5)
    with pytest.raises(ValueError, match="test_fraction and test_split"):
        RetrievalEvalCallback(beir_root, test_fraction=0.5, test_split="dev")
