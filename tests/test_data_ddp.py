"""Two processes (Lightning DDP, gloo, CPU): at every step both ranks train on the same dataset, language and
bucket, with disjoint slices whose union is the single-process global batch.

The DDP run happens in a subprocess running this file as a script (several in-process ``ddp`` fits in one pytest
session hang). Lightning's default ``use_distributed_sampler=True`` is kept on purpose: the loader is unaffected.
"""
import json
import os
import subprocess
import sys

import lightning as L
import torch
from transformers import AutoTokenizer

from m3lit.data import M3DataModule
from m3lit.data.synthetic import synthetic_lines, write_jsonl

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DM_ARGS = dict(seed=11, group_size=3, batch_size=[3, 2], bucket_boundaries=[0, 80, 512], passage_max_len=128,
               query_max_len=32)


def write_corpus(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    write_jsonl(os.path.join(folder, "en.jsonl"), synthetic_lines(30, language="en", seed=1, passage_words=(3, 30),
                                                                  duplicate_every=2))
    write_jsonl(os.path.join(folder, "ko.jsonl.gz"), synthetic_lines(22, language="ko", seed=2, passage_words=(3, 30)))


class Recorder(L.LightningModule):
    def __init__(self, out_dir: str):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.out_dir, self.seen = out_dir, []

    def training_step(self, batch, batch_idx):
        m = batch["meta"]
        self.seen.append({k: m[k] for k in ("epoch", "step", "micro_step", "dataset", "language", "bucket", "rows",
                                            "rank", "world_size")})
        x = batch["passages"]["attention_mask"].float().mean().reshape(1, 1)
        return self.lin(x).sum()

    def on_train_end(self):
        with open(os.path.join(self.out_dir, f"rank{self.global_rank}.json"), "w") as f:
            json.dump(self.seen, f)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run_ddp(corpus: str, out_dir: str, tokenizer_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dm = M3DataModule(corpus, tokenizer, cache_dir=os.path.join(out_dir, "cache"), **DM_ARGS)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Recorder(out_dir), datamodule=dm)


def test_two_ranks_share_dataset_and_bucket(tmp_path, tiny_m3_dir):
    corpus, out = str(tmp_path / "train"), str(tmp_path / "out")
    write_corpus(corpus)
    os.makedirs(out)
    env = {**os.environ, "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, corpus, out, tiny_m3_dir], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0

    single = M3DataModule(corpus, AutoTokenizer.from_pretrained(tiny_m3_dir), cache_dir=str(tmp_path / "c1"),
                          world_size=1, accumulate_grad_batches=2, **DM_ARGS)
    single.setup("fit")
    epochs = {m["epoch"] for m in ranks[0]}
    assert epochs == {0, 1}
    assert len(ranks[0]) == sum(single.plan.steps_per_epoch(e) for e in epochs)
    for a, b in zip(*ranks):
        assert (a["rank"], b["rank"], a["world_size"]) == (0, 1, 2)
        assert (a["epoch"], a["step"], a["dataset"], a["language"], a["bucket"]) == \
               (b["epoch"], b["step"], b["dataset"], b["language"], b["bucket"])
        assert set(a["rows"]).isdisjoint(b["rows"]) and len(a["rows"]) == len(b["rows"]) > 0
        dataset, language, bucket, rows = single.global_batch_rows(a["epoch"], a["step"])
        assert (dataset, language, bucket) == (a["dataset"], a["language"], a["bucket"])
        assert sorted(a["rows"] + b["rows"]) == sorted(rows)


if __name__ == "__main__":
    run_ddp(*sys.argv[1:4])
