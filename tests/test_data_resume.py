"""Exact resume through a real Lightning fit: a run stopped at step k and resumed from its checkpoint sees the
same batches and losses as an uninterrupted run (CPU, gradient accumulation 2; k mid epoch, at the epoch end,
after the epoch boundary)."""

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from m3lit.data import M3DataModule
from m3lit.data.synthetic import synthetic_lines, write_jsonl

MAX_STEPS = 12


class Recorder(L.LightningModule):
    """Stand-in model: mean token embeddings, InfoNCE over the group; records every micro-batch it trains on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(256, 8)
        self.seen: list[tuple] = []

    def encode(self, enc):
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return (self.emb(enc["input_ids"]) * mask).sum(1) / mask.sum(1)

    def training_step(self, batch, batch_idx):
        q, p = self.encode(batch["queries"]), self.encode(batch["passages"])
        scores = q @ p.T
        target = torch.arange(q.shape[0]) * batch["meta"]["group_size"]
        loss = torch.nn.functional.cross_entropy(scores, target)
        m = batch["meta"]
        self.seen.append((self.global_step, m["epoch"], m["micro_step"], m["dataset"], m["bucket"],
                          tuple(m["rows"]), loss.item(), int(batch["passages"]["input_ids"].sum())))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def fit(tmp_path, tokenizer, ckpt_dir, resume=None):
    folder = tmp_path / "train"
    if not folder.exists():
        folder.mkdir()
        write_jsonl(folder / "de.jsonl", synthetic_lines(24, language="de", seed=1, passage_words=(3, 30)))
        write_jsonl(folder / "es.jsonl", synthetic_lines(16, language="es", seed=2, passage_words=(3, 30)))
    dm = M3DataModule(str(folder), tokenizer, seed=5, group_size=3, batch_size=[3, 2], bucket_boundaries=[0, 80, 512],
                      passage_max_len=128, query_max_len=32, cache_dir=str(tmp_path / "cache"))
    model = Recorder()
    ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=MAX_STEPS, accumulate_grad_batches=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[ckpt],
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    return model.seen, dm


def test_resume_reproduces_batches_and_losses(tmp_path, tokenizer):
    full, dm = fit(tmp_path, tokenizer, tmp_path / "full")
    steps_per_epoch = dm.plan.steps_per_epoch(0)
    assert steps_per_epoch + 2 < MAX_STEPS < 2 * steps_per_epoch  # the run crosses an epoch boundary
    assert len(full) == 2 * MAX_STEPS and len({r[5] for r in full}) == len(full)
    # mid epoch 0, exactly at the end of epoch 0, mid epoch 1
    for step in (3, steps_per_epoch, steps_per_epoch + 2):
        ckpt = tmp_path / "full" / f"step={step}.ckpt"
        state = torch.load(ckpt, weights_only=False)["M3DataModule"]
        assert state["micro_step"] == 2 * step - (2 * steps_per_epoch if step > steps_per_epoch else 0)
        assert state["epoch"] == (1 if step > steps_per_epoch else 0)
        resumed, _ = fit(tmp_path, tokenizer, tmp_path / f"resumed{step}", resume=str(ckpt))
        assert resumed == full[2 * step :], f"resume from step {step} diverged"
