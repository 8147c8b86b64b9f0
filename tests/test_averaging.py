"""``averaging=ema``: the exported model is the exponential moving average of the weights after each optimizer step
(w̄₁ = w₁, w̄ₖ = d·w̄ₖ₋₁ + (1 − d)·wₖ), put in before the final evaluation; refused under FSDP2."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from safetensors.torch import load_file
from test_sweeps import compose_job

from m3lit.cli.train import build_trainer, run

STATES: list[dict[str, torch.Tensor]] = []


class RecordWeights(Callback):
    """The model's weights after every optimizer step, in ``STATES``."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        STATES.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


def exported_tensors(export) -> dict[str, torch.Tensor]:
    """Every tensor of a BGE-M3 export, named as in ``M3Model.state_dict()``."""
    tensors = {f"encoder.{k}": v for k, v in load_file(export / "model.safetensors").items()}
    for prefix, file in (("colbert_head.linear.", "colbert_linear.pt"), ("sparse_head.linear.", "sparse_linear.pt")):
        tensors |= {prefix + k: v for k, v in torch.load(export / file, weights_only=True).items()}
    return tensors


def test_the_export_is_the_moving_average_of_the_steps(tmp_path):
    STATES.clear()
    export = tmp_path / "export"
    run(compose_job(["averaging=ema", "averaging.decay=0.5", "trainer.max_steps=3", "callbacks=none", "logger=none",
                     "checkpoint=none", f"export_dir={export}",
                     "+callbacks.record._target_=test_averaging.RecordWeights"], tmp_path))
    assert len(STATES) == 3
    average = dict(STATES[0])
    for state in STATES[1:]:
        average = {k: 0.5 * average[k] + 0.5 * v if v.is_floating_point() else v for k, v in state.items()}
    exported = exported_tensors(export)
    assert len(exported) > 30
    for name, value in exported.items():
        torch.testing.assert_close(value, average[name], atol=1e-6, rtol=1e-5)
    last = STATES[-1]["colbert_head.linear.weight"]  # the last step's weights are not what was exported
    assert (last - exported["colbert_head.linear.weight"]).abs().max() > 1e-4


def test_averaging_runs_before_the_evaluation_and_is_refused_under_fsdp(tmp_path):
    trainer = build_trainer(compose_job(["averaging=ema", "logger=none"], tmp_path))
    assert isinstance(trainer.callbacks[0], EMAWeightAveraging)  # its on_train_end comes before the final evaluation
    with pytest.raises(ValueError, match="averaging=ema cannot average FSDP-sharded weights"):
        build_trainer(compose_job(["averaging=ema", "logger=none", "strategy=fsdp", "trainer.devices=1"], tmp_path))


def test_a_run_resumed_from_a_checkpoint_exports_the_same_average(tmp_path):
    """The checkpoint holds the average and the current weights (Lightning's ``current_model_state``): resumed at
    step 2 of 4, the run exports what the uninterrupted run exported."""
    common = ["averaging=ema", "averaging.decay=0.5", "trainer.max_steps=4", "callbacks=none", "logger=none",
              "checkpoint.every_n_steps=2", "checkpoint.keep=4"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(compose_job([*common, f"export_dir={full}/export"], full))
    middle = full / "checkpoints" / "step-0000002.ckpt"
    run(compose_job([*common, f"export_dir={resumed}/export", f"resume_from={middle}"], resumed))
    expected, got = exported_tensors(full / "export"), exported_tensors(resumed / "export")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0)
