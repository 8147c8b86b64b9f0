"""``m3lit-eval``: evaluate a BGE-M3-layout model on BEIR data (every head + hybrids), print tables, write JSON.

    m3lit-eval model_path=DIR beir=DIR output=FILE.json [split=dev] [max_length=8192 mcls=true] [device=cuda]

Configuration: ``conf/eval.yaml``; unknown keys are errors.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from .errors import report_errors
from .resolvers import CONFIG_DIR, CONFIG_PATH, check_known_keys

log = logging.getLogger("m3lit.cli.evaluate")

DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_dtype(dtype: str, device: str) -> str:
    """``dtype`` itself, or for ``auto`` what the hardware runs fast (``m3lit.scale.precision.auto_precision``):
    bfloat16 on CUDA with bf16 and on CPUs with native bf16, float16 on older CUDA GPUs, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    from ..scale.precision import auto_precision

    chosen, reason = auto_precision("cuda" if device.startswith("cuda") else "cpu")
    resolved = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(chosen, "float32")
    log.info("dtype=auto: %s (%s)", resolved, reason)
    return resolved


def load_encoder(model_path: str, device: str | None = None, dtype: str = "float32",
                 attn_implementation: str = "sdpa", fresh_heads: bool = False) -> Any:
    """An ``M3Embedder`` on ``device`` (default: cuda when available) with weights in ``dtype``."""
    import torch

    from ..inference.embedder import M3Embedder

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {DTYPES}")
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"model_path={model_path!r}: no such directory")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(dtype, device)
    encoder = M3Embedder.from_pretrained(model_path, device=device, attn_implementation=attn_implementation,
                                         fresh_heads=fresh_heads)
    if dtype != "float32":
        encoder.model.to(getattr(torch, dtype))
    return encoder


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as configured by ``cfg`` (see conf/eval.yaml); returns the results dict."""
    import torch

    from ..eval.evaluator import RetrievalSettings, evaluate_beir
    from ..eval.hybrid import hybrids_from_names
    from ..eval.tables import AVERAGE_KEY, format_results, load_baseline
    from ..model.defaults import HEADS

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    heads = tuple(cfg.heads) if cfg.heads else HEADS
    settings = RetrievalSettings(
        heads=heads,
        hybrids=hybrids_from_names(list(cfg.hybrids or []), dict(cfg.hybrid_weights or {}), heads=heads),
        metrics=tuple(cfg.metrics), batch_size=cfg.batch_size, max_tokens=cfg.max_tokens,
        max_length=cfg.max_length, query_max_length=cfg.query_max_length, candidate_depth=cfg.candidate_depth,
        colbert_exhaustive_max_docs=cfg.colbert_exhaustive_max_docs, colbert_rerank_depth=cfg.colbert_rerank_depth,
        dense_backend=cfg.dense_backend, mcls=cfg.mcls, per_query=bool(cfg.per_query),
    )
    encoder = load_encoder(cfg.model_path, cfg.device, cfg.dtype, cfg.attn_implementation,  # after the checks
                           bool(cfg.fresh_heads))
    if not cfg.heads:  # the heads the model trained, and the hybrids they make
        settings = settings.restricted_to(encoder.trained_heads)
    results = evaluate_beir(encoder, cfg.beir, split=cfg.split,
                            datasets=list(cfg.datasets) if cfg.datasets else None,
                            max_queries=cfg.max_queries, settings=settings)
    if cfg.print_table:
        names = [n for n in results if n != AVERAGE_KEY]
        baselines = load_baseline(cfg.baseline, names, cfg.baseline_group) if cfg.baseline else None
        print(format_results(results, baselines))
    if cfg.output:
        folder = os.path.dirname(os.path.abspath(cfg.output))
        os.makedirs(folder, exist_ok=True)
        with open(cfg.output, "w") as f:
            json.dump(results, f, indent=2)
        log.info("results written to %s", cfg.output)
    return results


def check_keys(cfg: DictConfig) -> None:
    """Reject keys that m3lit-eval's config does not define (also those added with Hydra's ``+key=``)."""
    check_known_keys(cfg, os.path.join(CONFIG_DIR, "eval.yaml"), "m3lit-eval")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@report_errors("m3lit-eval")
def main(cfg: DictConfig) -> None:
    check_keys(cfg)
    OmegaConf.set_readonly(cfg, True)
    run(cfg)


if __name__ == "__main__":
    main()
