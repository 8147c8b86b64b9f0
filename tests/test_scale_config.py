"""Scale configs compose and instantiate: strategy=fsdp/ddp/auto, train_step groups, the SLURM launcher."""
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import TINY_M3  # noqa: E402

from m3lit.cli.resolvers import register_resolvers  # noqa: E402
from m3lit.scale.fsdp import FSDP2Strategy  # noqa: E402

CONF = str(Path(__file__).resolve().parents[1] / "conf")
# the data group is another part's concern; the tokenizer comes from the test fixture
BASE = ["~data", "logger=none", f"model.tokenizer_path={TINY_M3}", "model.encoder_config.hidden_size=16",
        "model.encoder_config.num_attention_heads=2", "model.encoder_config.intermediate_size=32"]


def cfg(*overrides, hydra=False):
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=BASE + list(overrides), return_hydra_config=hydra)


def test_fsdp_strategy_config():
    c = cfg("strategy=fsdp", "trainer.precision=bf16-mixed")
    strategy = instantiate(c.trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy)
    assert strategy.activation_checkpointing and strategy.reshard_after_forward
    assert strategy.resolved_param_dtype(c.trainer.precision) is not None
    assert strategy.resolved_param_dtype("32-true") is None
    assert strategy._save_distributed_checkpoint


@pytest.mark.parametrize("name", ["auto", "ddp"])
def test_other_strategies_still_compose(name):
    c = cfg(f"strategy={name}")
    assert "strategy" in c.trainer and "train_step" in c


@pytest.mark.parametrize("group, mode", [("default", "plain"), ("split_batch", "split_batch"),
                                         ("grad_cache", "grad_cache")])
def test_train_step_reaches_the_module(group, mode):
    from m3lit.cli.train import build_module

    c = cfg(f"train_step={group}", "train_step.encoding.packing=true", "train_step.cross_device.colbert=false")
    module = build_module(c)
    options = module.train_step_options
    assert options.encoding.mode == mode and options.encoding.packing
    assert options.cross_device == {"dense": True, "sparse": True, "colbert": False}
    layer_ckpt = module.model.encoder.is_activation_checkpointing
    assert layer_ckpt == (mode == "split_batch")


def test_slurm_launcher_config():
    c = cfg("hydra/launcher=slurm", "trainer.devices=8", "trainer.num_nodes=4", hydra=True)
    launcher = c.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)
    assert launcher.additional_parameters.signal.startswith("USR1@")  # Lightning's requeue signal
    assert launcher.additional_parameters.requeue is True
    params = instantiate(launcher).params  # resolved as submitit receives them
    assert params["nodes"] == 4 and params["max_num_timeout"] == 0


def test_fsdp_strategy_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="param_dtype='bf8'"):
        FSDP2Strategy(param_dtype="bf8")
