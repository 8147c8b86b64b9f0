"""``m3lit-train``: compose the Hydra config, instantiate data, model, loss and trainer, fit, export.

    m3lit-train                                   # the embedded default (tiny model, bundled data, CPU)
    m3lit-train model=small trainer.max_steps=2000 teacher=uniform
    m3lit-train -m +sweep=teacher_weighting       # a multirun sweep
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf

from ..inference.embedder import load_tokenizer
from ..inference.export import export_bge_m3, flagembedding_note
from ..model import build_m3_model
from ..model.positions import position_limit
from ..module import M3LightningModule
from ..runs.checkpointing import check_checkpoint_file
from ..runs.tracking import attach_run_config, log_export
from ..scale.nonfinite import NonFiniteLossError
from ..scale.precision import resolve_precision
from .config_types import check_plain_arguments
from .errors import report_errors
from .launch import allocator_in_use
from .resolvers import CONFIG_PATH, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def build_module(cfg: DictConfig) -> M3LightningModule:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    tokenizer_path = model_cfg.get("tokenizer_path") or model_cfg.get("path")
    if tokenizer_path is None:
        raise ValueError("model: set `path` (a model directory) or `tokenizer_path`")
    tokenizer = load_tokenizer(tokenizer_path)
    samples = int(model_cfg.pop("sparse_init_samples", 1024))
    if model_cfg.get("sparse_init") == "idf":  # fitted on the training passages (a fresh head only)
        from ..data.sources import sample_passages

        train = cfg.data.train
        model_cfg["sparse_init_texts"] = sample_passages(
            OmegaConf.to_container(train, resolve=True) if OmegaConf.is_config(train) else train, samples)
    model = build_m3_model(tokenizer, **model_cfg)
    loss = instantiate(cfg.loss, teacher=instantiate(cfg.teacher))
    train_step = OmegaConf.to_container(cfg.train_step, resolve=True) if cfg.get("train_step") else {}
    return M3LightningModule(model, loss, tokenizer, **OmegaConf.to_container(cfg.optim, resolve=True), **train_step)


def check_input_lengths(module: M3LightningModule, datamodule: Any) -> None:
    """Every dataset's ``query_max_len`` / ``passage_max_len`` must fit the encoder's position embeddings (checked
    before training, not when the first long batch comes up)."""
    config = module.model.encoder.config
    limit = position_limit(config)
    if limit is None:
        return
    for spec in getattr(datamodule, "specs", []):
        for key in ("query_max_len", "passage_max_len"):
            value = getattr(spec.options, key)
            if value > limit:
                raise ValueError(f"data.{key}={value} (dataset '{spec.name}') exceeds the {limit} tokens this encoder's "
                                 f"position embeddings allow (max_position_embeddings="
                                 f"{config.max_position_embeddings}): set data.{key}={limit} or lower")


def build_trainer(cfg: DictConfig) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    averaging = instantiate(cfg.averaging) if cfg.get("averaging") else None
    if averaging is not None:  # first: its on_train_end puts the averaged weights in before the final evaluation
        callbacks.insert(0, averaging)
    if cfg.get("checkpoint"):
        callbacks.append(instantiate(cfg.checkpoint))
    logger: Any = False
    if cfg.get("logger"):
        logger = instantiate(cfg.logger)
    values = OmegaConf.to_container(cfg.trainer, resolve=True)
    precision = values["precision"] = resolve_precision(values.get("precision"), values.get("accelerator", "auto"))
    check_plain_arguments(L.Trainer, values, "trainer")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, precision=precision)
    if averaging is not None:
        check_averaging(trainer)
    attach_run_config(trainer, cfg)  # the tracking callback logs the resolved config and writes the run summary
    return trainer


def check_averaging(trainer: L.Trainer) -> None:
    """Lightning's weight averaging copies the whole module: refused under FSDP2, whose weights are sharded; elsewhere
    its warning about ``configure_model`` (a no-op without sharding) is silenced."""
    if isinstance(trainer.strategy, ModelParallelStrategy):
        raise ValueError("averaging=ema cannot average FSDP-sharded weights (Lightning's WeightAveraging copies the "
                         "whole unsharded module): use averaging=none with strategy=fsdp, or strategy=ddp")
    warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model that overrides "
                                              "the configure_model")  # its other warnings stay


def run(cfg: DictConfig) -> float | None:
    """Train per ``cfg``; returns the value of ``cfg.objective`` (a logged metric) for sweepers, if present."""
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    datamodule = instantiate(cfg.data, tokenizer=module.tokenizer, seed=cfg.seed)
    check_input_lengths(module, datamodule)
    if cfg.get("resume_from"):
        check_checkpoint_file(cfg.resume_from)
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        log.info("memory allocator: %s", allocator_in_use())
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("resume_from"))
        if module.skips.consecutive:
            raise NonFiniteLossError(f"the run ended on {module.skips.consecutive} step(s) skipped for a non-finite "
                                     "loss: the model is not exported (train/skipped in the logs)")
        export_dir = cfg.get("export_dir")
        if export_dir:
            state = module.full_model_state_dict()  # collective under sharding
            if trainer.is_global_zero:
                path = export_bge_m3(module.model, module.tokenizer, export_dir, state_dict=state)
                print(f"exported: {path}", flush=True)
                note = flagembedding_note(module.model)
                if note:
                    print(f"note: {note}", flush=True)
                log_export(trainer, path)  # W&B model artifact (callbacks.tracking.export_artifact)
                for layers in cfg.get("export_layers") or []:
                    print(f"exported: {export_truncated(module, int(layers), export_dir, state)}", flush=True)
        objective = cfg.get("objective")
        value = trainer.callback_metrics.get(objective) if objective else None
        return None if value is None else float(value)
    finally:
        finish_loggers(trainer)


def export_truncated(module: M3LightningModule, layers: int, export_dir: str, state: Any) -> str:
    """``<export_dir>-L<k>``: the first ``layers`` encoder blocks with the heads trained on that layer
    (``teacher=layerwise`` with heads of their own; else the model's heads)."""
    from ..model.layerwise import truncated_model

    if state is not None:
        raise ValueError("export_layers: not with a sharded (FSDP) model; export the full model and truncate it with "
                         "m3lit.model.layerwise.truncated_model")
    head_set = module.layer_heads[str(layers)] if str(layers) in module.layer_heads else None
    return export_bge_m3(truncated_model(module.model, layers, head_set), module.tokenizer, f"{export_dir}-L{layers}")


def finish_loggers(trainer: L.Trainer) -> None:
    """Close W&B runs so that multiruns never hang on a dangling run."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
@report_errors("m3lit-train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
