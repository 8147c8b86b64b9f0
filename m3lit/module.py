"""M3LightningModule: encoder + heads + teacher aggregator, trained with the M3 objective."""
from __future__ import annotations

import time
from typing import Any, Mapping

import lightning as L
import torch
from transformers import PreTrainedTokenizerBase

from .embedder import M3Embedder
from .loss import LossOutput, M3Loss
from .loss.infonce import group_scores
from .model import M3Model, M3Reps
from .model.scores import score_matrix


class M3LightningModule(L.LightningModule):
    """Training step: encode queries (B) and grouped passages (B·G), score every query against the candidates
    (its group plus, unless the batch says ``no_in_batch_neg``, all other passages), apply ``M3Loss``.

    Optimiser: AdamW (no weight decay on biases and norms) with linear warm-up then linear decay to 0.
    """

    def __init__(
        self,
        model: M3Model,
        loss: M3Loss,
        tokenizer: PreTrainedTokenizerBase | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_ratio: float = 0.1,
        warmup_steps: int | None = None,
        teacher_lr: float | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.tokenizer = tokenizer
        self.optim = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                          warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, teacher_lr=teacher_lr)
        self._step_started: float | None = None

    # ------------------------------------------------------------------ inference view
    def embedder(self) -> M3Embedder:
        """An M3Embedder sharing this module's weights (for evaluation during training)."""
        if self.tokenizer is None:
            raise ValueError("M3LightningModule.embedder() needs the tokenizer")
        return M3Embedder(self.model, self.tokenizer)

    def full_model_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The model's full state dict when parameters are sharded (DTensors under FSDP2), else ``None``.

        A collective under sharding: every rank must call it."""
        from torch.distributed.tensor import DTensor

        if not any(isinstance(p, DTensor) for p in self.model.parameters()):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    # ------------------------------------------------------------------ training
    def encode(self, features: Mapping[str, torch.Tensor]) -> M3Reps:
        return self.model(features["input_ids"], features["attention_mask"])

    def compute_scores(self, q: M3Reps, p: M3Reps, no_in_batch_neg: bool) -> tuple[dict[str, torch.Tensor],
                                                                                     torch.Tensor, int]:
        """Scores per head (B, N), the positive's column per query (B,), and the group size G."""
        batch_size = q.input_ids.shape[0]
        group_size = p.input_ids.shape[0] // batch_size
        pos_index = torch.arange(batch_size, device=q.input_ids.device) * group_size
        scores = {h: score_matrix(h, q, p) for h in self.model.active_heads}
        if no_in_batch_neg:
            scores = {h: group_scores(s, pos_index, group_size) for h, s in scores.items()}
            pos_index = torch.zeros_like(pos_index)
        return scores, pos_index, group_size

    def forward_loss(self, batch: Mapping[str, Any]) -> LossOutput:
        q = self.encode(batch["queries"])
        p = self.encode(batch["passages"])
        if p.input_ids.shape[0] % q.input_ids.shape[0]:
            raise ValueError(f"batch has {q.input_ids.shape[0]} queries but {p.input_ids.shape[0]} passages: "
                             "expected a whole number of passages per query")
        scores, pos_index, group_size = self.compute_scores(q, p, bool(batch.get("no_in_batch_neg", False)))
        return self.loss_fn(scores, pos_index, group_size, batch.get("teacher_scores"), step=self.global_step)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.forward_loss(batch)
        batch_size = batch["queries"]["input_ids"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in out.scalars().items()}, batch_size=batch_size)
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict({f"teacher/w_{h}": w for h, w in self.loss_fn.teacher.weights().items()},
                      batch_size=batch_size)
        self._log_batch_stats(batch, batch_size)
        return out.loss

    def _log_batch_stats(self, batch: Mapping[str, Any], batch_size: int) -> None:
        real = sum(int(batch[k]["attention_mask"].sum()) for k in ("queries", "passages"))
        padded = sum(batch[k]["attention_mask"].numel() for k in ("queries", "passages"))
        stats = {"batch/real_tokens": float(real), "batch/padded_tokens": float(padded),
                 "batch/padding_fraction": 1.0 - real / max(padded, 1)}
        meta = batch.get("meta") or {}
        if isinstance(meta.get("bucket"), (int, float)):
            stats["batch/bucket"] = float(meta["bucket"])
        now = time.perf_counter()
        if self._step_started is not None:
            stats["perf/tokens_per_s"] = real / max(now - self._step_started, 1e-9)
        self.log_dict(stats, batch_size=batch_size)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.optim["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        teacher_params = [p for p in self.loss_fn.parameters() if p.requires_grad]
        if teacher_params:
            groups.append({"params": teacher_params, "weight_decay": 0.0,
                           "lr": self.optim["teacher_lr"] or self.optim["lr"]})
        optimizer = torch.optim.AdamW(groups, lr=self.optim["lr"], betas=self.optim["betas"], eps=self.optim["eps"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.optim["warmup_steps"]
        if warmup is None:
            warmup = int(self.optim["warmup_ratio"] * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
