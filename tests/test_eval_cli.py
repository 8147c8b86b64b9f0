import json
import os
from pathlib import Path

import pytest
from conftest import run_console
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_eval_evaluate import make_dataset

from m3lit.cli.evaluate import CONFIG_DIR, check_keys, run
from m3lit.eval.callback import RetrievalEvalCallback

TINY = str(Path(__file__).parent / "fixtures" / "tiny_m3")


def eval_config(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


@pytest.fixture(scope="module")
def beir_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_dataset(str(root / "de"), seed=11, n_docs=30, n_queries=6)
    make_dataset(str(root / "xling_de-en"), seed=12, n_docs=30, n_queries=6)
    return str(root)


def test_run_writes_json_and_prints_tables(beir_root, tmp_path, capsys):
    baseline = tmp_path / "bm25.json"
    baseline.write_text(json.dumps({"mine": {"de": {"ndcg@10": 0.5}, "xling_de-en": {"ndcg@10": 0.25}}}))
    out = tmp_path / "res" / "results.json"
    cfg = eval_config(f"model_path={TINY}", f"beir={beir_root}", f"output={out}", f"baseline={baseline}",
                      "max_length=64", "device=cpu")
    check_keys(cfg)
    results = run(cfg)
    saved = json.loads(out.read_text())
    assert list(saved) == ["de", "xling_de-en", "average"]
    assert set(saved["de"]) == {"dense", "sparse", "colbert", "dense+sparse", "all", "stats"}
    assert set(saved["average"]["all"]) == {"ndcg@10", "recall@100", "mrr@10"}
    assert saved["average"] == results["average"]
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "bm25" in printed and "0.3750" in printed  # baseline average


def test_hybrid_names_weights_and_subset(beir_root, tmp_path):
    cfg = eval_config(f"model_path={TINY}", f"beir={beir_root}", "heads=[dense,sparse]", "hybrids=[dense+sparse]",
                      "hybrid_weights.sparse=0.0", "datasets=[de]", "print_table=false", "device=cpu")
    results = run(cfg)
    assert list(results) == ["de", "average"]
    assert set(results["de"]) == {"dense", "sparse", "dense+sparse", "stats"}
    assert results["de"]["dense+sparse"] == pytest.approx(results["de"]["dense"])
    assert 0.0 <= results["de"]["stats"]["sparse_zero_frac"] <= 1.0 and results["de"]["stats"]["sparse_nnz"] > 0
    # per_query=true: every query's values, whose means are the reported ones
    with_queries = run(eval_config(f"model_path={TINY}", f"beir={beir_root}", "heads=[dense,sparse]",
                                   "hybrids=[dense+sparse]", "datasets=[de]", "print_table=false", "device=cpu",
                                   "per_query=true"))
    per = with_queries["de"]["per_query"]["sparse"]["ndcg@10"]
    assert len(per) == 6 and sum(per.values()) / 6 == pytest.approx(with_queries["de"]["sparse"]["ndcg@10"])


def test_unknown_keys_are_errors(beir_root, tmp_path):
    cfg = eval_config(f"model_path={TINY}", f"beir={beir_root}", "+colour=red")
    with pytest.raises(ValueError, match="unknown key"):
        check_keys(cfg)
    proc = run_console("m3lit-eval", f"model_path={TINY}", f"beir={beir_root}", "max_lenght=64", cwd=tmp_path,
                       check=False)
    assert proc.returncode != 0 and "max_lenght" in proc.stderr


def test_callback_config_instantiates(beir_root):
    cfg = OmegaConf.load(os.path.join(CONFIG_DIR, "callbacks", "retrieval_eval.yaml"))
    cfg.retrieval_eval.beir = beir_root
    cb = instantiate(cfg.retrieval_eval)
    assert isinstance(cb, RetrievalEvalCallback)
    assert cb.settings.active_hybrids == {"dense+sparse": {"dense": 1.0, "sparse": 0.3},
                                          "all": {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}}
    assert cb.monitor == "average/all/ndcg@10" and cb.settings.colbert_exhaustive_max_docs == 0


def test_dtype_auto_picks_bf16_only_where_the_hardware_has_it(monkeypatch, beir_root, tmp_path):
    import torch

    from m3lit.cli import evaluate
    from m3lit.scale import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert evaluate.resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert evaluate.resolve_dtype("auto", "cpu") == "float32"
    assert evaluate.resolve_dtype("float16", "cpu") == "float16"  # an explicit choice is kept
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    encoder = evaluate.load_encoder(TINY, "cpu", "auto")
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='bf16': expected one of"):
        evaluate.load_encoder(TINY, "cpu", "bf16")
