"""Scores are computed in float32 under bf16 autocast; a NaN/inf loss stops the run or skips the step."""
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import random_batch, tiny_module  # noqa: E402

from m3lit.model import M3Reps  # noqa: E402
from m3lit.model.scores import score_matrix  # noqa: E402
from m3lit.scale.nonfinite import NonFiniteLossError  # noqa: E402


def to_bf16(r: M3Reps) -> M3Reps:
    return M3Reps(r.input_ids, r.attention_mask, r.dense.bfloat16(), r.sparse.bfloat16(), r.colbert.bfloat16(),
                  r.colbert_mask)


def test_scores_are_float32_under_bf16_autocast():
    module = tiny_module()
    batch = random_batch()
    with torch.no_grad():
        q, p = to_bf16(module.encode(batch["queries"])), to_bf16(module.encode(batch["passages"]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert score_matrix("dense", q, p).dtype == torch.bfloat16  # what scoring would do without care
            scores, _, _ = module.compute_scores(q, p, no_in_batch_neg=False)
        exact, _, _ = module.compute_scores(M3Reps(q.input_ids, q.attention_mask, q.dense.float(), q.sparse.float(),
                                                   q.colbert.float(), q.colbert_mask),
                                            M3Reps(p.input_ids, p.attention_mask, p.dense.float(), p.sparse.float(),
                                                   p.colbert.float(), p.colbert_mask), no_in_batch_neg=False)
    for head, s in scores.items():
        assert s.dtype == torch.float32, head
        torch.testing.assert_close(s, exact[head], atol=0, rtol=0)


def nan_batch():
    batch = random_batch(seed=1, teacher_scores=True)
    batch["teacher_scores"][0, 0] = float("nan")  # external-teacher distillation turns it into a NaN loss
    batch["meta"] = {"dataset": "broken.jsonl", "language": "de", "bucket": 3}
    return batch


class Snapshots(L.Callback):
    def __init__(self):
        self.states = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()})


def fit(batches, tmp_path, max_steps, **train_step):
    module, snapshots = tiny_module(lr=1e-2, **train_step), Snapshots()
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[snapshots])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return module, trainer, snapshots.states


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path):
    good = random_batch(seed=2, teacher_scores=True)
    with pytest.raises(NonFiniteLossError) as err:
        fit([good, nan_batch()], tmp_path, max_steps=3)
    message = str(err.value)
    for part in ("optimizer step 1", "dataset=broken.jsonl", "language=de", "bucket=3", "nan",
                 "train_step.nonfinite=skip"):
        assert part in message, (part, message)


def test_nonfinite_loss_skips_the_step(tmp_path):
    """The skipped step changes neither weights nor optimizer state; Lightning still counts it (max_steps)."""
    good = [random_batch(seed=s, teacher_scores=True) for s in (2, 3)]
    module, trainer, states = fit([good[0], nan_batch(), good[1]], tmp_path, max_steps=3, nonfinite="skip")
    assert module.skipped_steps == 1 and trainer.global_step == 3
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 1.0
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, atol=0, rtol=0)  # nothing moved at the NaN step
    assert max(float((states[2][k] - states[1][k]).abs().max()) for k in states[1]) > 1e-4  # training went on
    adam_steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert adam_steps == {2}  # two real updates


@pytest.mark.parametrize("batches, limits, message", [
    ("NNN", dict(nonfinite_max_consecutive=3, nonfinite_max_total=None), "at optimizer step 2: 3 steps skipped for a"
     " non-finite loss in a row (limit train_step.nonfinite_max_consecutive=3)"),
    ("NGNGN", dict(nonfinite_max_consecutive=None, nonfinite_max_total=3), "at optimizer step 4: 3 steps skipped for"
     " a non-finite loss in all (limit train_step.nonfinite_max_total=3)"),
])
def test_skipping_stops_past_its_limits(tmp_path, batches, limits, message):
    good = iter(random_batch(seed=s, teacher_scores=True) for s in range(10, 20))
    data = [nan_batch() if c == "N" else next(good) for c in batches]
    with pytest.raises(NonFiniteLossError) as err:
        fit(data, tmp_path, max_steps=len(data), nonfinite="skip", **limits)
    assert message in str(err.value) and "not exported" in str(err.value)
    assert "set train_step.nonfinite=skip" not in str(err.value)  # already skipping: no such advice


def test_skipping_under_the_limits_finishes(tmp_path):
    good = [random_batch(seed=s, teacher_scores=True) for s in (2, 3, 4)]
    module, trainer, _ = fit([good[0], nan_batch(), good[1], nan_batch(), good[2]], tmp_path, max_steps=5,
                             nonfinite="skip", nonfinite_max_consecutive=2, nonfinite_max_total=3)
    assert trainer.global_step == 5 and module.skips.total == 2 and module.skips.consecutive == 0


# ------------------------------------------------------------------ trainer.precision=auto, packing=auto
def test_auto_precision_follows_the_hardware(tmp_path, monkeypatch):
    from m3lit.scale.precision import auto_precision, cpu_flags, resolve_precision

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(str(info)) and cpu_flags(str(tmp_path / "none")) == set()
    assert auto_precision("cpu", {"avx2", "avx512f"})[0] == "32-true"
    assert auto_precision("cpu", {"avx2", "avx512_bf16"}) == ("bf16-mixed", "CPU with native bf16 (avx512_bf16)")
    assert auto_precision("cpu", {"amx_bf16"})[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_precision("gpu", set())[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_precision("gpu", set())[0] == "16-mixed"
    assert resolve_precision("32-true", "cpu") == "32-true" and resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    expected = "bf16-mixed" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else "32-true"  # this machine
    assert resolve_precision("auto", "cpu") == expected


def test_packing_auto_is_on_except_for_the_layerwise_teacher():
    assert tiny_module(encoding={"packing": "auto"}).train_step_options.encoding.packing is True
    module = tiny_module(encoding={"packing": "auto"}, layerwise={"layers": [1]})
    assert module.train_step_options.encoding.packing is False
    with pytest.raises(ValueError, match="packing='yes'"):
        tiny_module(encoding={"packing": "yes"})
