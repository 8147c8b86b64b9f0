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
