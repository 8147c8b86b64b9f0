"""Every option of every config group composes and trains one fast_dev_run step (in-process, through
``m3lit-train``'s ``run``); ``trainer=gpu`` composes only; ``strategy=ddp|fsdp`` run as console scripts on two
processes in ``test_full_stack.py``. The weights written in configs equal the one Python source."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_sweeps import QUICK, compose_job, run_job

from m3lit.cli.resolvers import CONFIG_DIR
from m3lit.model.defaults import ENSEMBLE_WEIGHTS, LOSS_WEIGHTS

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name not in ("hydra", "experiment", "mine"))
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]
COMPOSE_ONLY = {("trainer", "gpu"), ("strategy", "ddp"), ("strategy", "fsdp")}
# a one-step batch small enough for the 24-layer model on CPU
SHORT = ["data.batch_size=2", "data.group_size=2", "data.query_max_len=16", "data.passage_max_len=16"]


def extra_overrides(group: str, option: str, tiny_m3_dir: str) -> list[str]:
    if (group, option) == ("model", "pretrained"):
        return [f"model.path={tiny_m3_dir}"]
    if (group, option) == ("model", "xlmr_large"):
        # the architecture (24 layers × 1024) with the embedded tokenizer's vocabulary instead of XLM-R's 250k
        return ["~model.encoder_config.vocab_size", "callbacks=none", *SHORT]
    if group == "data":
        return SHORT
    if (group, option) == ("teacher", "external"):  # needs teacher scores on every line: the scored file
        return ["data.train=${paths.default_assets}/train/distill_en.jsonl"]
    if (group, option) == ("callbacks", "retrieval_eval"):
        return ["+callbacks.retrieval_eval.beir=${paths.default_assets}/dev"]
    return []


def test_every_group_option_is_listed():
    assert {g for g, _ in OPTIONS} == {"averaging", "callbacks", "checkpoint", "data", "logger", "loss", "model", "optim",
                                      "strategy", "teacher", "train_step", "trainer"}
    assert len(OPTIONS) >= 28


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_trains_a_fast_dev_run_step(group, option, tiny_m3_dir, tmp_path):
    overrides = [f"{group}={option}", *extra_overrides(group, option, tiny_m3_dir)]
    if group != "logger":
        overrides.append("logger=none")
    if (group, option) in COMPOSE_ONLY:
        cfg = compose_job(overrides, tmp_path)
        assert OmegaConf.to_container(cfg, resolve=True)
        return
    if (group == "callbacks" and option != "default") or (group, option) == ("model", "xlmr_large"):
        from m3lit.cli.train import run

        evaluates = option in ("retrieval_eval",)
        quick = QUICK if evaluates else ["trainer.fast_dev_run=true", "export_dir=null"]
        value = run(compose_job(overrides + quick, tmp_path))
        assert (value is not None) == evaluates  # the objective is an evaluation metric
        assert (tmp_path / "m3lit_run.json").exists() == (option == "tracking")
        return
    summary = run_job(overrides, tmp_path)
    assert summary["status"] == "finished" and summary["config"]["hydra"]["choices"][group] == option


def test_config_weights_equal_the_python_defaults():
    teacher = {name: compose_job([f"teacher={name}"], Path("/tmp")).teacher
               for name in ("weighted", "learned", "external", "mixed")}
    for name, cfg in teacher.items():
        assert dict(cfg.weights) == ENSEMBLE_WEIGHTS, name
    cfg = compose_job([], Path("/tmp"))
    assert dict(cfg.loss.head_weights) == LOSS_WEIGHTS
    assert dict(cfg.callbacks.retrieval_eval.hybrid_weights) == ENSEMBLE_WEIGHTS
    assert dict(OmegaConf.load(Path(CONFIG_DIR) / "eval.yaml").hybrid_weights) == ENSEMBLE_WEIGHTS
