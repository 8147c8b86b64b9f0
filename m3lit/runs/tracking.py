"""Experiment tracking for ``m3lit-train`` runs: the ``TrackingCallback`` (conf/callbacks/tracking.yaml).

- at the start of fit: the full resolved config, plus ``hydra: {choices, overrides, job_num, sweep_dir,
  output_dir}``, as every logger's hyperparameters (the W&B run config, CSV ``hparams.yaml``), and as
  ``config_resolved.yaml`` in the output dir (also saved with the W&B run);
- every optimizer step: ``train/grad_norm``, the 2-norm of all gradients before clipping, a tensor (no device
  sync; Lightning sends it to the loggers every ``log_every_n_steps``; under FSDP sharding the LightningModule logs
  it while clipping);
- every ``log_every_n_steps`` optimizer steps: the ``teacher/*``, ``kd/*`` and ``train/loss*`` values as one line of
  ``train_history.jsonl`` in the output dir (``{"step", "metrics"}``; the teacher-weight curves of ``m3lit-compare``);
- at the end of fit (also after a failure): ``m3lit_run.json`` in the output dir (``m3lit.runs.record``) with the
  final ``eval/*``, ``test/*``, ``teacher/*``, ``train/*``, ``batch/*`` and ``perf/*`` values — what ``m3lit-compare`` reads;
- after the export (``m3lit-train`` calls ``log_export``): the BGE-M3 directory as a W&B ``model`` artifact when
  ``export_artifact`` is set.
Files and logger calls happen on global rank 0 only.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf

from .record import RUN_FILES, SUMMARY_FILE, TRAIN_HISTORY_FILE, numeric_metrics
from .record import write_summary as write_summary_file

log = logging.getLogger(__name__)

RESOLVED_CONFIG_FILE = "config_resolved.yaml"
HISTORY_PREFIXES = ("teacher/", "kd/", "train/loss")
SUMMARY_PREFIXES = ("eval/", "test/", "teacher/", "kd/", "train/", "batch/", "perf/")


def hydra_info() -> dict[str, Any]:
    """Hydra's group choices, command-line overrides, job number and directories ({} outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra/")}
    mode = getattr(hc.mode, "name", str(hc.mode))
    info: dict[str, Any] = {"choices": choices, "overrides": list(hc.overrides.task),
                            "output_dir": hc.runtime.output_dir, "mode": mode}
    num = OmegaConf.select(hc, "job.num", default=None)
    if num is not None and mode == "MULTIRUN":
        info["job_num"] = int(num)
        info["sweep_dir"] = str(OmegaConf.select(hc, "sweep.dir", default=""))
    return info


def wandb_loggers(trainer: Trainer) -> list[Any]:
    return [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]


class TrackingCallback(Callback):
    """Logs the run config, gradient norm, a per-run summary file and (optionally) the exported model.

    Args:
        log_config: log the resolved config (+ Hydra choices/overrides) to every logger and write
            ``config_resolved.yaml``.
        grad_norm: log ``train/grad_norm`` every optimizer step.
        summary_file: file name of the run summary in the output dir (null: none).
        export_artifact: log the exported model directory as a W&B artifact (type ``model``).
        artifact_name: the artifact's name (default ``model-<W&B run id>``).
        history_file: file name of the training history in the output dir (null: none).
    """

    def __init__(self, log_config: bool = True, grad_norm: bool = True, summary_file: str | None = SUMMARY_FILE,
                 export_artifact: bool = False, artifact_name: str | None = None,
                 history_file: str | None = TRAIN_HISTORY_FILE):
        super().__init__()
        self.history_file = history_file
        self._history_step: int | None = None
        self.log_config, self.grad_norm = log_config, grad_norm
        self.summary_file, self.export_artifact, self.artifact_name = summary_file, export_artifact, artifact_name
        self.run_config: dict[str, Any] | None = None
        self.objective: str | None = None
        self._fit_started: float | None = None

    # ------------------------------------------------------------------ set by m3lit-train
    def attach(self, cfg: DictConfig) -> None:
        """Remember the run's config (resolved) and Hydra context; called by ``m3lit.cli.train.build_trainer``."""
        try:
            config = OmegaConf.to_container(cfg, resolve=True)
        except Exception as err:  # e.g. ${hydra:...} outside a Hydra app: keep the interpolations as written
            log.warning("logging the config unresolved: %s", err)
            config = OmegaConf.to_container(cfg, resolve=False)
        self.run_config = {**config, "hydra": hydra_info()}
        self.objective = cfg.get("objective")

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.perf_counter()
        if not (self.log_config and self.run_config is not None and trainer.is_global_zero):
            return
        for logger in trainer.loggers:
            logger.log_hyperparams(self.run_config)
        path = os.path.join(trainer.default_root_dir, RESOLVED_CONFIG_FILE)
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(OmegaConf.to_yaml(OmegaConf.create(self.run_config)))
        for logger in wandb_loggers(trainer):
            logger.experiment.save(path, base_path=trainer.default_root_dir, policy="now")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if not self.grad_norm:
            return
        norm = gradient_norm(pl_module)
        if norm is not None:
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))
        if not (self.history_file and trainer.is_global_zero) or step % every or step == self._history_step:
            return
        self._history_step = step
        values = {k: v for k, v in _as_floats(trainer.callback_metrics).items() if k.startswith(HISTORY_PREFIXES)}
        if values:
            os.makedirs(trainer.default_root_dir, exist_ok=True)
            with open(os.path.join(trainer.default_root_dir, self.history_file), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "metrics": values}) + "\n")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.write_summary(trainer, "finished")
            self.save_run_files(trainer)

    def save_run_files(self, trainer: Trainer) -> None:
        """The per-query values and histories (``RUN_FILES``) with each W&B run, so that ``m3lit-compare`` of a W&B
        group online makes the same paired tests and curves as of the local folders (rank 0)."""
        if not trainer.is_global_zero:
            return
        for logger in wandb_loggers(trainer):
            for name in RUN_FILES:
                path = os.path.join(trainer.default_root_dir, name)
                if os.path.isfile(path):
                    logger.experiment.save(path, base_path=trainer.default_root_dir, policy="now")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.write_summary(trainer, "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed")

    def write_summary(self, trainer: Trainer, status: str) -> str | None:
        """Write the run summary into the output dir (rank 0); returns its path."""
        if not self.summary_file or not trainer.is_global_zero:
            return None
        path = os.path.join(trainer.default_root_dir, self.summary_file)
        return write_summary_file(path, self.summary(trainer, status))

    # ------------------------------------------------------------------ summary and artifact
    def summary(self, trainer: Trainer, status: str) -> dict[str, Any]:
        """The run summary (``m3lit.runs.record`` layout) from the trainer's final logged values."""
        metrics = {k: v for k, v in _as_floats(trainer.callback_metrics).items() if k.startswith(SUMMARY_PREFIXES)}
        metrics["trainer/global_step"] = float(trainer.global_step)
        config = self.run_config or {}
        objective_value = metrics.get(self.objective) if self.objective else None
        wandb_info = None
        run_id = None
        for logger in wandb_loggers(trainer):
            run = logger.experiment
            run_id = run.id
            wandb_info = {"id": run.id, "project": run.project, "entity": getattr(run, "entity", None) or None,
                          "mode": "offline" if getattr(run, "offline", False) else "online", "dir": run.dir}
        return {"status": status, "name": config.get("run_name"), "group": config.get("group"),
                "tags": config.get("tags"), "run_id": run_id or trainer.default_root_dir,
                "global_step": trainer.global_step,
                "fit_seconds": None if self._fit_started is None else time.perf_counter() - self._fit_started,
                "objective": {"name": self.objective, "value": objective_value},
                "config": config, "metrics": metrics, "wandb": wandb_info}

    def log_export(self, trainer: Trainer, path: str) -> None:
        """Log the exported model directory as a W&B artifact (rank 0, when ``export_artifact`` is set)."""
        if not (self.export_artifact and trainer.is_global_zero):
            return
        import wandb

        for logger in wandb_loggers(trainer):
            run = logger.experiment
            name = self.artifact_name or f"model-{run.id}"
            config = self.run_config or {}
            artifact = wandb.Artifact(name, type="model", metadata={
                "format": "bge-m3", "global_step": trainer.global_step,
                "choices": (config.get("hydra") or {}).get("choices"),
                **{k: v for k, v in _as_floats(trainer.callback_metrics).items() if k.startswith("eval/average/")}})
            artifact.add_dir(path)
            run.log_artifact(artifact, aliases=["latest", f"step-{trainer.global_step}"])
            log.info("logged the exported model as W&B artifact %s", name)


def gradient_norm(module: torch.nn.Module) -> torch.Tensor | None:
    """2-norm of all parameter gradients (a float32 scalar tensor); None without gradients or when they are sharded
    DTensors (FSDP: the LightningModule logs the norm while clipping)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads or any(isinstance(g, DTensor) for g in grads):
        return None
    norms = torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
    return torch.linalg.vector_norm(norms)


def _as_floats(values: Mapping[str, Any]) -> dict[str, float]:
    return numeric_metrics({k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
                            for k, v in values.items()})


def attach_run_config(trainer: Trainer, cfg: DictConfig) -> None:
    """Give every TrackingCallback of ``trainer`` the run's config (``m3lit-train`` calls it)."""
    for callback in trainer.callbacks:
        if isinstance(callback, TrackingCallback):
            callback.attach(cfg)


def log_export(trainer: Trainer, path: str) -> None:
    """Let every TrackingCallback of ``trainer`` log the exported model (``m3lit-train`` calls it after export)."""
    for callback in trainer.callbacks:
        if isinstance(callback, TrackingCallback):
            callback.log_export(trainer, path)
