"""split_batch and grad_cache give the loss and every gradient of plain full-batch training (1e-5), dropout on."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import grads, max_grad_diff, random_batch, tiny_module  # noqa: E402

from m3lit.scale.grad_cache import encode_grad_cache  # noqa: E402
from m3lit.scale.options import EncodingOptions, TrainStepOptions  # noqa: E402
from m3lit.scale.packing import encode_rows  # noqa: E402
from m3lit.scale.split_batch import cat_reps, row_slices  # noqa: E402

TOL = 1e-5
SUB = 3  # rows per sub-batch: 4 queries -> 3 + 1, 8 passages -> 3 + 3 + 2


def run(module, batch, seed=123):
    """Loss and gradients (model + learned teacher weights) of one training step."""
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = module.forward_loss(batch)
    out.loss.backward()
    return float(out.loss), grads(module)


def chunked_plain(module):
    """Plain autograd over the same sub-batches (no checkpointing, no cache): with dropout on, the sub-batches
    draw their masks from the RNG in the same order as split_batch / grad_cache do."""
    def encode(features):
        ids, mask = features["input_ids"], features["attention_mask"]
        return cat_reps([module.model(ids[s], mask[s]) for s in row_slices(ids.shape[0], SUB)])
    module.encode = encode
    return module


@pytest.mark.parametrize("mode", ["split_batch", "grad_cache"])
@pytest.mark.parametrize("teacher_scores", [False, True])
def test_equals_plain_full_batch_without_dropout(mode, teacher_scores):
    batch = random_batch(teacher_scores=teacher_scores)
    ref_loss, ref = run(tiny_module(), batch)
    loss, got = run(tiny_module(encoding={"mode": mode, "sub_batch_size": SUB}), batch)
    assert loss == pytest.approx(ref_loss, abs=TOL)
    worst, name = max_grad_diff(ref, got)
    assert worst < TOL, (name, worst)
    assert any(n.startswith("loss_fn.teacher") for n in got)  # learned teacher weights get their gradient too


@pytest.mark.parametrize("mode", ["split_batch", "grad_cache"])
@pytest.mark.parametrize("heads", [("dense", "sparse", "colbert"), ("sparse",), ("dense", "colbert")])
def test_equals_plain_training_with_dropout(mode, heads):
    batch = random_batch()
    ref_loss, ref = run(chunked_plain(tiny_module(dropout=0.2, heads=heads)), batch)
    module = tiny_module(dropout=0.2, heads=heads, encoding={"mode": mode, "sub_batch_size": SUB})
    loss, got = run(module, batch)
    assert loss == pytest.approx(ref_loss, abs=TOL)
    worst, name = max_grad_diff(ref, got)
    assert worst < TOL, (name, worst)
    # dropout is really on: another seed gives another loss
    assert abs(run(module, batch, seed=7)[0] - loss) > 1e-4


def test_grad_cache_without_rng_replay_is_wrong():
    """The replay matters: re-encoding with fresh dropout masks gives gradients that differ from the true ones."""
    batch = random_batch()
    _, ref = run(chunked_plain(tiny_module(dropout=0.2)), batch)
    module = tiny_module(dropout=0.2)

    def no_replay(features):
        return encode_grad_cache(lambda i, m: encode_rows(module.model, i, m), features["input_ids"],
                                 features["attention_mask"], SUB, preserve_rng_state=False)
    module.encode = no_replay
    _, got = run(module, batch)
    assert max_grad_diff(ref, got)[0] > 1e-3


def test_grad_cache_inside_lightning_step_with_accumulation_and_clipping(tmp_path):
    """Lightning's own backward, accumulation (2 micro-batches) and norm clipping drive grad_cache: the gradients
    the optimizer applies equal plain training's."""
    import lightning as L

    batches = [random_batch(seed=s) for s in range(2)]

    class Applied(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.grads = grads(module)  # after the 2nd micro-batch: accumulated, clipped, applied

    def fit(**train_step):
        module, applied = tiny_module(**train_step), Applied()
        trainer = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=2, gradient_clip_val=0.05,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[applied])
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
        return applied.grads

    plain = fit()
    cached = fit(encoding={"mode": "grad_cache", "sub_batch_size": 2})
    assert len(plain) > 10
    worst, name = max_grad_diff(plain, cached)
    assert worst < TOL, (name, worst)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in plain.values()))
    assert float(norm) == pytest.approx(0.05, rel=1e-3)  # the clipping really acted


def test_sub_batch_rows_from_table_budget_or_size():
    assert EncodingOptions(token_budget=4096).sub_batch_rows(512) == 8
    assert EncodingOptions(token_budget=100).sub_batch_rows(512) == 1
    assert EncodingOptions(sub_batch_size=5, token_budget=4096).sub_batch_rows(512) == 5
    table = EncodingOptions(table={"512": 48, 1024: 32, 8192: 8}, sub_batch_size=5)
    assert [table.sub_batch_rows(n) for n in (64, 512, 513, 4096, 9000)] == [48, 48, 32, 8, 8]


def test_bad_train_step_options_are_named():
    with pytest.raises(ValueError, match="encoding.mode='gradcache'"):
        TrainStepOptions.from_config(encoding={"mode": "gradcache"})
    with pytest.raises(ValueError, match=r"encoding: unknown key\(s\) \['sub_batch'\]"):
        TrainStepOptions.from_config(encoding={"sub_batch": 4})
    with pytest.raises(ValueError, match="table: entry"):
        TrainStepOptions.from_config(encoding={"table": {"long": 4}})
    with pytest.raises(ValueError, match=r"cross_device: unknown key\(s\) \['bm25'\]"):
        TrainStepOptions.from_config(cross_device={"bm25": True})
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        TrainStepOptions.from_config(nonfinite="ignore")
