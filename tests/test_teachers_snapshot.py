"""teacher=snapshot: targets over each line's group from the frozen copy, the per-line cache (hit on a revisit,
written next to the checkpoints, read back on resume, dropped when the data changes); DDP in
test_scale_cross_device."""
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import random_batch, tiny_module  # noqa: E402

from m3lit.loss import M3Loss, SnapshotTeacher, soft_cross_entropy  # noqa: E402
from m3lit.scale.cross_device import MASKED_SCORE  # noqa: E402


def batch_with_lines(seed=0, rows=(3, 7, 9, 11)):
    batch = random_batch(queries=4, group=2, seed=seed)
    batch["meta"] = {"dataset": "de.jsonl", "rows": list(rows)}
    return batch


def test_targets_are_the_snapshots_distribution_over_each_group():
    g = torch.Generator().manual_seed(0)
    scores = {h: torch.randn(2, 4, generator=g) * 0.05 for h in ("dense", "sparse", "colbert")}
    group = {h: torch.randn(2, 2, generator=g) * 0.05 for h in scores}
    pos = torch.tensor([0, 2])
    rows = {h: torch.full((2, 4), MASKED_SCORE).scatter(1, pos[:, None] + torch.arange(2), v) for h, v in group.items()}
    out = M3Loss(teacher=SnapshotTeacher())(scores, pos, 2, sources={"snapshot": rows})
    s = {h: v / 0.02 for h, v in scores.items()}
    g_s = {h: v / 0.02 for h, v in group.items()}
    p_group = torch.softmax(g_s["dense"] + 0.3 * g_s["sparse"] + g_s["colbert"], -1)
    p = torch.zeros(2, 4).scatter(1, pos[:, None] + torch.arange(2), p_group)
    expected = sum(w * soft_cross_entropy(p, s[h]) for h, w in (("dense", 1), ("sparse", 0.1), ("colbert", 1))) / 3
    torch.testing.assert_close(out.distill, expected)
    # before the first snapshot: the current ensemble
    torch.testing.assert_close(M3Loss(teacher=SnapshotTeacher())(scores, pos, 2).distill, M3Loss()(scores, pos, 2).distill)


def test_each_lines_group_is_scored_once_and_the_cache_gives_the_same_targets():
    module = tiny_module(snapshot=True)
    batch = batch_with_lines()
    first = module.forward_loss(batch)
    assert (module.snapshot.misses, module.snapshot.hits) == (4, 0) and len(module.snapshot.cache) == 4
    calls = []
    module.snapshot.copy.register_forward_hook(lambda *a: calls.append(1))
    again = module.forward_loss(batch)
    assert calls == [] and module.snapshot.hits == 4  # all four lines from the cache: no forward of the copy
    torch.testing.assert_close(again.distill, first.distill)
    other = batch_with_lines(rows=(3, 7, 9, 12))  # one line not seen yet: the batch is scored
    module.forward_loss(other)
    assert calls and len(module.snapshot.cache) == 5
    module.snapshot.take(module.model)  # a new snapshot: a new version, the old scores dropped
    assert module.snapshot.version == 2 and module.snapshot.cache == {}


class SaveAt(L.Callback):
    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            trainer.save_checkpoint(self.path)


def test_the_cache_is_written_with_checkpoints_and_read_back_on_resume_unless_the_data_changed(tmp_path):
    module = tiny_module(snapshot=True, lr=1e-2)
    module.snapshot.every_n_steps = 1  # a snapshot after every step
    batches = [batch_with_lines(seed=s, rows=(4 * s, 4 * s + 1, 4 * s + 2, 4 * s + 3)) for s in range(3)]
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[SaveAt(str(tmp_path / "step2.ckpt"))])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    checkpoint = torch.load(tmp_path / "step2.ckpt", weights_only=False)
    saved = checkpoint["m3lit"]["snapshot"]
    assert saved["version"] == 3 and Path(saved["cache_dir"], "snapshot-rank0.pt").is_file()
    assert any(k.startswith("snapshot.copy.") for k in checkpoint["state_dict"])
    # a new module resuming: the version and (same data) the cache come back
    resumed = tiny_module(snapshot=True)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.snapshot.version == 3
    cache = torch.load(Path(saved["cache_dir"], "snapshot-rank0.pt"), weights_only=True)
    assert len(resumed.snapshot.cache) == len(cache["keys"])
    # other training data: the cache is not used
    fresh = tiny_module(snapshot=True)
    fresh.snapshot.version = 3
    message = fresh.snapshot.load(str(Path(saved["cache_dir"], "snapshot-rank0.pt")), {"files": ["other.jsonl"]})
    assert "changed" in message and fresh.snapshot.cache == {}
