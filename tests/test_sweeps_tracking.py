"""TrackingCallback (m3lit.runs.tracking): gradient norm, config logging, run summary on success and failure, rank 0 only."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from m3lit.runs.tracking import TrackingCallback, gradient_norm


class RecordingLogger:
    def __init__(self):
        self.hparams = []

    def log_hyperparams(self, params):
        self.hparams.append(params)


def fake_trainer(tmp_path, rank_zero=True, metrics=None):
    return SimpleNamespace(is_global_zero=rank_zero, loggers=[RecordingLogger()], default_root_dir=str(tmp_path),
                           callback_metrics={k: torch.tensor(v) for k, v in (metrics or {}).items()}, global_step=7)


def attached(**kwargs) -> TrackingCallback:
    callback = TrackingCallback(**kwargs)
    callback.attach(OmegaConf.create({"run_name": "r", "group": "g", "tags": ["t"], "objective": "eval/x",
                                      "teacher": {"weights": {"sparse": "${half:0.6}"}}}))
    return callback


@pytest.fixture(autouse=True)
def outside_hydra():
    """No Hydra app context (other tests set one); a resolver of our own."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None
    OmegaConf.register_new_resolver("half", lambda x: float(x) / 2, replace=True)
    yield
    OmegaConf.clear_resolver("half")


def test_gradient_norm_is_the_global_two_norm_before_clipping():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    assert gradient_norm(model) is None
    model(torch.randn(5, 4)).pow(2).sum().backward()
    norm = gradient_norm(model)
    before_clipping = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    assert float(norm) == pytest.approx(float(before_clipping), rel=1e-6) and norm > 1e-3


def test_config_is_resolved_and_logged_with_hydra_context(tmp_path):
    trainer = fake_trainer(tmp_path)
    callback = attached()
    callback.on_fit_start(trainer, None)
    (params,) = trainer.loggers[0].hparams
    assert params["teacher"]["weights"]["sparse"] == 0.3 and params["hydra"] == {}  # outside a Hydra app
    assert "sparse: 0.3" in (tmp_path / "config_resolved.yaml").read_text()


def test_summary_on_success_and_on_failure(tmp_path):
    trainer = fake_trainer(tmp_path, metrics={"eval/x": 0.5, "train/loss": 1.5, "epoch": 0.0})
    callback = attached()
    callback.on_fit_start(trainer, None)
    callback.teardown(trainer, None, "fit")
    summary = json.loads((tmp_path / "m3lit_run.json").read_text())
    assert summary["status"] == "finished" and summary["objective"] == {"name": "eval/x", "value": 0.5}
    assert summary["metrics"] == {"eval/x": 0.5, "train/loss": 1.5, "trainer/global_step": 7.0}
    assert (summary["name"], summary["group"], summary["tags"], summary["global_step"]) == ("r", "g", ["t"], 7)
    callback.on_exception(trainer, None, RuntimeError("boom"))
    assert json.loads((tmp_path / "m3lit_run.json").read_text())["status"] == "failed"
    callback.on_exception(trainer, None, KeyboardInterrupt())
    assert json.loads((tmp_path / "m3lit_run.json").read_text())["status"] == "interrupted"


def test_other_ranks_write_and_log_nothing(tmp_path):
    trainer = fake_trainer(tmp_path, rank_zero=False, metrics={"eval/x": 0.5})
    callback = attached(export_artifact=True)
    callback.on_fit_start(trainer, None)
    callback.teardown(trainer, None, "fit")
    callback.log_export(trainer, str(tmp_path))
    assert trainer.loggers[0].hparams == [] and list(tmp_path.iterdir()) == []


def test_switches_turn_features_off(tmp_path):
    trainer = fake_trainer(tmp_path)
    callback = attached(log_config=False, summary_file=None, grad_norm=False)
    callback.on_fit_start(trainer, None)
    callback.teardown(trainer, None, "fit")
    logged = []
    module = SimpleNamespace(log=lambda *a, **k: logged.append(a), parameters=lambda: [])
    callback.on_before_optimizer_step(trainer, module, None)
    assert trainer.loggers[0].hparams == [] and list(tmp_path.iterdir()) == [] and logged == []


def test_grad_norm_is_logged_every_optimizer_step(tmp_path):
    model = torch.nn.Linear(3, 1)
    model(torch.ones(2, 3)).sum().backward()
    logged = []
    module = SimpleNamespace(log=lambda name, value, **kw: logged.append((name, value, kw)),
                             parameters=model.parameters)
    TrackingCallback().on_before_optimizer_step(fake_trainer(tmp_path), module, None)
    ((name, value, kw),) = logged
    assert name == "train/grad_norm" and isinstance(value, torch.Tensor) and kw["on_step"] and not kw["on_epoch"]
    assert float(value) == pytest.approx(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
