"""M3LightningModule: encoder + heads + teacher aggregator, trained with the M3 objective."""
from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from transformers import PreTrainedTokenizerBase

from .inference.embedder import M3Embedder
from .loss import LossOutput, M3Loss
from .loss.ema_model import EmaModel
from .loss.infonce import group_columns
from .loss.snapshot import SnapshotModel
from .loss.views import augment
from .model import M3Model, M3Reps
from .model.layerwise import HeadSet, check_layers, layer_reps
from .optim import (
    adamw_kernel,
    check_adamw_implementation,
    check_head_lr,
    check_layer_decay,
    parameter_groups,
    warmup_then_linear_decay,
)
from .runs.rng_state import gather_rng_states, restore_rng_states
from .scale.cross_device import MASKED_SCORE, score_candidates
from .scale.fast_dropout import use_fast_dropout
from .scale.fsdp import average_replicated_grads, clip_grad_norm_, full_state_dict, is_sharded, shard_for_strategy
from .scale.fused_qkv import fuse_qkv
from .scale.lean_ffn import recompute_gelu
from .scale.nonfinite import NonFiniteLossError, SkipCounter, all_finite, describe
from .scale.options import TrainStepOptions
from .scale.packing import computed_tokens, one_row
from .scale.split_batch import enable_layer_checkpointing
from .scale.step_encoding import encode_batch

log = logging.getLogger(__name__)

class M3LightningModule(L.LightningModule):
    """Training step: encode queries (B) and grouped passages (B·G), score every query against the candidates
    (its group plus, unless the batch says ``no_in_batch_neg``, all other passages), apply ``M3Loss``.

    Optimiser: AdamW (no weight decay on biases and norms) with linear warm-up then linear decay to 0.

    Scale knobs (``train_step`` config, see ``m3lit.scale.options``): ``cross_device`` per head (candidates
    gathered from all ranks with gradient), ``encoding`` (plain | split_batch | grad_cache, packing),
    ``nonfinite`` (stop | skip). Scores and losses are computed in float32, outside autocast.
    Under ``strategy=fsdp`` (``m3lit.scale.fsdp.FSDP2Strategy``) ``configure_model`` shards the model.
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
        head_lr: Mapping[str, float | None] | None = None,
        layer_decay: float = 1.0,
        implementation: str = "auto",
        cross_device: Mapping[str, bool] | bool | None = None,
        encoding: Mapping[str, Any] | None = None,
        nonfinite: str = "stop",
        nonfinite_max_consecutive: int | None = 5,
        nonfinite_max_total: int | None = 50,
    ):
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.tokenizer = tokenizer
        self.optim = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                          warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, teacher_lr=teacher_lr,
                          head_lr=check_head_lr(head_lr), layer_decay=check_layer_decay(layer_decay),
                          implementation=check_adamw_implementation(implementation))
        self._step_started: float | None = None
        self._step_tokens: tuple[int, int] | None = None
        self._last_batch_end: float | None = None
        self.train_step_options = TrainStepOptions.from_config(cross_device, encoding, nonfinite)
        if self.train_step_options.encoding.mode == "split_batch":
            enable_layer_checkpointing(self.model)
        n_layers = getattr(self.model.encoder.config, "num_hidden_layers", 0)
        if self.train_step_options.encoding.recompute_gelu:
            log.info("train_step.encoding.recompute_gelu: GELU recomputed in the backward pass in %d of %d layers",
                     recompute_gelu(self.model.encoder), n_layers)
        if self.train_step_options.encoding.fuse_qkv:
            log.info("train_step.encoding.fuse_qkv: query, key and value in one product in %d of %d layers",
                     fuse_qkv(self.model.encoder), n_layers)
        if self.train_step_options.encoding.fast_dropout:
            log.info("train_step.encoding.fast_dropout: %d dropout module(s) draw their CPU masks from 16-bit lanes",
                     use_fast_dropout(self.model.encoder))
        self.skips = SkipCounter(nonfinite_max_consecutive, nonfinite_max_total)
        self._drop_update = False
        self._pending_rng: dict[str, Any] | None = None
        check_teacher_heads(loss, model.active_heads)
        ema = loss.teacher.ema_settings()
        self.ema = EmaModel(model, ema) if ema is not None else None  # teacher=ema / mix with an ema source
        self.snapshot = SnapshotModel(model, getattr(loss.teacher, "every_n_steps", None)) \
            if "snapshot" in loss.teacher.sources_needed else None  # teacher=snapshot
        self.layers: list[int] = []
        self.layer_heads = nn.ModuleDict()  # teacher=layerwise with heads of their own per layer
        encoding = self.train_step_options.encoding
        if encoding.packing == "auto":  # packed wherever it is exact; layerwise reads one padded pass
            encoding.packing = not hasattr(loss.teacher, "layers")
            log.info("train_step.encoding.packing=auto: %s", "on (unpadded encoding)" if encoding.packing else
                     "off (teacher=layerwise reads the intermediate layers of one padded pass)")
        if hasattr(loss.teacher, "layers"):
            self.layers = check_layers(model, loss.teacher.layers)
            if encoding.mode != "plain" or encoding.packing:
                raise ValueError("teacher=layerwise: needs train_step.encoding.mode=plain without packing (the "
                                 "intermediate layers come from one padded encoder pass)")
            if not loss.teacher.shared_heads:
                self.layer_heads = nn.ModuleDict({str(k): HeadSet(model) for k in self.layers})

    @property
    def skipped_steps(self) -> int:
        return self.skips.total

    # ------------------------------------------------------------------ inference view
    def embedder(self) -> M3Embedder:
        """An M3Embedder sharing this module's weights (for evaluation during training)."""
        if self.tokenizer is None:
            raise ValueError("M3LightningModule.embedder() needs the tokenizer")
        return M3Embedder(self.model, self.tokenizer)

    def full_model_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The model's full state dict when parameters are sharded (DTensors under FSDP2), else ``None``.

        A collective under sharding: every rank must call it."""
        return full_state_dict(self.model)

    # ------------------------------------------------------------------ training
    def encode(self, features: Mapping[str, torch.Tensor]) -> M3Reps:
        return encode_batch(self.model, features["input_ids"], features["attention_mask"],
                            self.train_step_options.encoding)

    def compute_scores(self, q: M3Reps, p: M3Reps, no_in_batch_neg: bool) -> tuple[dict[str, torch.Tensor],
                                                                                     torch.Tensor, int]:
        """Scores per head (B, N) in float32, the positive's column per query (B,), and the group size G
        (``m3lit.scale.cross_device.score_candidates`` with this run's ``cross_device`` settings)."""
        return score_candidates(q, p, self.model.active_heads, self.train_step_options.cross_device, no_in_batch_neg)

    def forward_loss(self, batch: Mapping[str, Any]) -> LossOutput:
        if self.layers:
            return self.layerwise_loss(batch)
        q = self.encode(batch["queries"])
        p = self.encode(batch["passages"])
        if p.input_ids.shape[0] % q.input_ids.shape[0]:
            raise ValueError(f"batch has {q.input_ids.shape[0]} queries but {p.input_ids.shape[0]} passages: "
                             "expected a whole number of passages per query")
        no_in_batch_neg = bool(batch.get("no_in_batch_neg", False))
        scores, pos_index, group_size = self.compute_scores(q, p, no_in_batch_neg)
        sources = {}
        if self.ema is not None and self.ema.active(self.global_step):
            sources["ema"] = self.ema_scores(batch, no_in_batch_neg)
        if "views" in self.loss_fn.teacher.sources_needed:
            sources["views"] = self.view_scores(batch, no_in_batch_neg)
        if self.snapshot is not None and self.snapshot.active:
            sources["snapshot"] = self.snapshot_scores(batch, pos_index, scores[next(iter(scores))].shape[1])
        return self.loss_fn(scores, pos_index, group_size, batch.get("teacher_scores"), step=self.global_step,
                            sources=sources)

    def layerwise_loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """teacher=layerwise: one encoder pass gives the final and the intermediate layers' representations; each
        layer's heads are scored against the same candidates (gathered across ranks like the model's)."""
        heads = dict(self.layer_heads) if len(self.layer_heads) else None
        q, q_layers = layer_reps(self.model, batch["queries"]["input_ids"], batch["queries"]["attention_mask"],
                                 self.layers, heads)
        p, p_layers = layer_reps(self.model, batch["passages"]["input_ids"], batch["passages"]["attention_mask"],
                                 self.layers, heads)
        no_in_batch_neg = bool(batch.get("no_in_batch_neg", False))
        scores, pos_index, group_size = self.compute_scores(q, p, no_in_batch_neg)
        layer_scores = {k: self.compute_scores(q_layers[k], p_layers[k], no_in_batch_neg)[0] for k in self.layers}
        return self.loss_fn(scores, pos_index, group_size, batch.get("teacher_scores"), step=self.global_step,
                            layer_scores=layer_scores)

    def view_scores(self, batch: Mapping[str, Any], no_in_batch_neg: bool) -> dict[str, torch.Tensor]:
        """(B, N) scores per head of a second view of the batch (``teacher=views``), by the model itself; with
        gradient when the teacher is symmetric."""
        teacher = self.loss_fn.teacher
        if self.tokenizer is None:
            raise ValueError("teacher=views needs the tokenizer (pad and mask token ids)")
        reps = []
        with torch.set_grad_enabled(teacher.symmetric and torch.is_grad_enabled()):
            for key in ("queries", "passages"):
                if teacher.view == "translation":  # a batch without translations: the same texts (dropout view)
                    reps.append(self.encode(batch.get("views", batch)[key]))
                    continue
                ids, mask = augment(batch[key]["input_ids"], batch[key]["attention_mask"], teacher.view,
                                    teacher.rate, self.model.special_ids, self.tokenizer.pad_token_id,
                                    self.tokenizer.mask_token_id, teacher.seed, self.global_step)
                reps.append(self.encode({"input_ids": ids, "attention_mask": mask}))
            return self.compute_scores(reps[0], reps[1], no_in_batch_neg)[0]

    @torch.no_grad()
    def snapshot_scores(self, batch: Mapping[str, Any], pos_index: torch.Tensor, candidates: int,
                        ) -> dict[str, torch.Tensor]:
        """The snapshot's raw scores of each query's own group, from the per-line cache or computed (and cached),
        placed on the (B, N) candidate row at the group's columns, ``MASKED_SCORE`` elsewhere."""
        heads = self.model.active_heads
        group = batch["passages"]["input_ids"].shape[0] // batch["queries"]["input_ids"].shape[0]
        keys = self.snapshot.keys(batch.get("meta"), batch["passages"], group)
        values = self.snapshot.lookup(keys)
        if is_sharded(self.snapshot.copy) and torch.distributed.is_initialized():
            # a sharded copy's forward is a collective: when one rank misses its cache, every rank runs it
            missing = torch.tensor(float(values is None), device=pos_index.device)
            torch.distributed.all_reduce(missing, op=torch.distributed.ReduceOp.MAX)
            values = None if missing.item() else values
        if values is None:
            per_head = self.compute_scores(*self._copy_reps(self.snapshot.copy, batch), True)[0]
            values = torch.stack([per_head[h] for h in heads], dim=1)  # (B, heads, G)
            self.snapshot.store(keys, values)
        values = values.to(pos_index.device)
        columns = group_columns(pos_index, group)
        out = {}
        for i, head in enumerate(heads):
            row = values.new_full((values.shape[0], candidates), MASKED_SCORE)
            out[head] = row.scatter(1, columns, values[:, i])
        return out

    def _copy_reps(self, copy: M3Model, batch: Mapping[str, Any]) -> tuple[M3Reps, M3Reps]:
        """Queries and passages encoded by a frozen copy (eval mode: plainly, with this run's packing)."""
        options = self.train_step_options.encoding
        return tuple(encode_batch(copy, batch[k]["input_ids"], batch[k]["attention_mask"], options)
                     for k in ("queries", "passages"))

    @torch.no_grad()
    def ema_scores(self, batch: Mapping[str, Any], no_in_batch_neg: bool) -> dict[str, torch.Tensor]:
        """The momentum copy's (B, N) scores per head on the same batch and candidates (no gradient)."""
        return self.compute_scores(*self._copy_reps(self.ema.copy, batch), no_in_batch_neg)[0]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.forward_loss(batch)
        batch_size = batch["queries"]["input_ids"].shape[0]
        if not all_finite(out.loss):
            skipping = self.train_step_options.nonfinite == "skip"
            message = describe(self.global_step, out.head_losses, batch.get("meta"), skipping)
            if not skipping:
                raise NonFiniteLossError(message)
            self.skips.skipped(self.global_step, message)  # raises past the limits
            self._drop_update = True
            if self.global_rank == 0:
                log.warning("skipping the step: %s", message)
            # logged as what it is: a skipped step with a non-finite loss (never the last finite value)
            self.log_dict({"train/skipped_nonfinite": float(self.skips.total), "train/skipped": 1.0},
                          batch_size=batch_size)
            self.log("train/loss", float("nan"), prog_bar=True, batch_size=batch_size)
            # A zero loss on every trainable parameter, disconnected from the non-finite graph: backward (and
            # DDP/FSDP's gradient reduction) runs as usual, then on_before_optimizer_step drops the gradients so
            # the optimizer changes neither weights nor its state. Lightning still counts the step.
            return _zero_loss(self)
        self.skips.finite()
        if self.train_step_options.nonfinite == "skip":
            self.log("train/skipped", 0.0, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in out.scalars().items()}, batch_size=batch_size)
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=batch_size)
        teacher = self.loss_fn.teacher
        values = {f"teacher/w_{h}": w for h, w in teacher.weights().items() if h in self.model.active_heads}
        if teacher.temperature() is not None:
            values["teacher/temperature"] = teacher.temperature()
        if self.snapshot is not None:
            looked = self.snapshot.hits + self.snapshot.misses
            values["teacher/snapshot_version"] = float(self.snapshot.version)
            values["teacher/snapshot_cached"] = self.snapshot.hits / looked if looked else 0.0
        self.log_dict({**values, **{k: v.detach() for k, v in out.diagnostics.items()}}, batch_size=batch_size)
        self._log_batch_stats(batch, batch_size)
        return out.loss

    def _log_batch_stats(self, batch: Mapping[str, Any], batch_size: int) -> None:
        """Token and padding statistics of the batch: the data module's (``meta``), counted here only for batches
        that come without them; ``batch/computed_tokens``: what the encoder computes (packed: no padding)."""
        meta = batch.get("meta") or {}
        if "real_tokens" in meta and "padded_tokens" in meta:
            real, padded = int(meta["real_tokens"]), int(meta["padded_tokens"])
        else:
            real = sum(int(batch[k]["attention_mask"].sum()) for k in ("queries", "passages"))
            padded = sum(batch[k]["attention_mask"].numel() for k in ("queries", "passages"))
        encoding = self.train_step_options.encoding
        single = one_row(self.model.encoder, encoding.pack_length)
        computed = sum(computed_tokens(batch[k]["attention_mask"], bool(encoding.packing), encoding.pack_length,
                                       single) for k in ("queries", "passages"))
        stats = {"batch/real_tokens": float(real), "batch/padded_tokens": float(padded),
                 "batch/padding_fraction": 1.0 - real / max(padded, 1), "batch/computed_tokens": float(computed)}
        if isinstance(meta.get("bucket"), (int, float)):
            stats["batch/bucket"] = float(meta["bucket"])
        if getattr(self.loss_fn.teacher, "view", None) == "translation":  # share of rows whose view is translated
            rows = max(int(batch["queries"]["input_ids"].shape[0]), 1)
            stats["batch/translated_queries"] = float(meta.get("translated_queries", 0)) / rows
            stats["batch/translated_positives"] = float(meta.get("translated_positives", 0)) / rows
        self._step_tokens = (real, batch_size)
        self.log_dict(stats, batch_size=batch_size)

    def on_fit_start(self) -> None:
        """Train mode for every submodule, whatever loaded the model (``from_pretrained`` returns eval mode and
        Lightning keeps the modes it finds): dropout is on as in the encoder's config."""
        self.train()
        frozen = sum(1 for copy in (self.ema, self.snapshot) if copy is not None for m in copy.modules()
                     if not m.training)
        if frozen:  # the teacher's copies stay in eval mode by design; Lightning would warn about exactly these
            warnings.filterwarnings("ignore", message=rf"Found {frozen} module\(s\) in eval mode at the start")
            log.info("the teacher's frozen copy: %d modules in eval mode by design (no dropout in its targets); "
                     "every other module trains", frozen)
        if self.ema is not None:
            s = self.ema.settings
            self.print(f"teacher EMA copy: {self.ema.memory_bytes() / 2 ** 20:.1f} MiB more weights on this rank (the "
                       f"model's, once more; no gradients or optimizer state); decay {s.decay}, targets from step "
                       f"{s.start_step}, updated every {s.update_every} step(s)")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:  # first step after a resume: the RNGs as the interrupted run left them
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
        self._step_started = time.perf_counter()

    # ------------------------------------------------------------------ checkpoints
    def model_signature(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed into this module: encoder shape, heads, pooling, whether the
        teacher has learned weights, whether the encoder's rate decays by layer (the optimiser's parameter groups
        follow from these)."""
        config = self.model.encoder.config
        encoder = {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                          "num_attention_heads", "intermediate_size", "vocab_size",
                                                          "max_position_embeddings")}
        return {"encoder": encoder, "heads": list(self.model.active_heads),
                "colbert_dim": int(self.model.colbert_head.linear.out_features),
                "pooling": self.model.head_config.pooling,
                "learned_teacher_weights": any(p.requires_grad for p in self.loss_fn.parameters()),
                "ema_teacher": self.ema is not None, "snapshot_teacher": self.snapshot is not None,
                "layer_heads": sorted(self.layer_heads), "layer_decay_groups": self.optim["layer_decay"] != 1.0}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds every rank's RNG states, the model signature and the skip counters (a collective: all ranks)."""
        checkpoint["m3lit"] = {"rng": gather_rng_states(), "model": self.model_signature(),
                               "skips": self.skips.state_dict()}
        self._last_batch_end = None  # nor the checkpoint
        if self.snapshot is not None:  # its weights are in the state dict; the per-line cache goes beside it
            folder = os.path.abspath(os.path.join(self.trainer.default_root_dir, "teacher_cache"))
            self.snapshot.save(os.path.join(folder, f"snapshot-rank{self.global_rank}.pt"), self._data_fingerprint())
            checkpoint["m3lit"]["snapshot"] = {"version": self.snapshot.version, "cache_dir": folder}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a checkpoint of another model or head set (naming the differences), before any weight loads."""
        saved = checkpoint.get("m3lit")
        if saved is None:
            log.warning("the checkpoint has no m3lit section (an older or foreign checkpoint): resuming without RNG "
                        "states or model checks")
            return
        differences = signature_differences(saved.get("model", {}), self.model_signature())
        if differences:
            raise ValueError("resume_from: the checkpoint was written by a different model configuration: "
                             + "; ".join(differences) + ". Resume with the configuration it was trained with, or "
                             "start a new run from its exported model (model.path=...)")
        self.skips.load_state_dict(saved.get("skips", {}))
        if self.snapshot is not None and saved.get("snapshot"):
            self.snapshot.version = int(saved["snapshot"]["version"])
            path = os.path.join(saved["snapshot"]["cache_dir"], f"snapshot-rank{self.global_rank}.pt")
            log.info("teacher=snapshot: %s", self.snapshot.load(path, self._data_fingerprint()))
        rng = saved.get("rng") or []
        world = self.trainer.world_size if self._trainer is not None else 1
        if len(rng) == world:
            self._pending_rng = rng[self.global_rank if self._trainer is not None else 0]
        else:
            log.warning("the checkpoint holds RNG states of %d rank(s), this run has %d: random numbers (dropout) "
                        "continue from this run's seed instead", len(rng), world)

    def _data_fingerprint(self) -> Any:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return datamodule.fingerprint() if hasattr(datamodule, "fingerprint") else None

    def on_train_start(self) -> None:
        self._last_batch_end = time.perf_counter()

    def on_validation_end(self) -> None:
        self._last_batch_end = None  # the next batch's perf/step_s would count the validation

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """``perf/tokens_per_s``: real (non-pad) tokens per second of forward, backward and optimizer update;
        ``perf/step_s``: wall seconds since the previous batch ended (data loading included; callbacks at that
        step's end too, e.g. a retrieval evaluation; not logged after a validation or a checkpoint)."""
        now = time.perf_counter()
        if self._step_started is not None and self._step_tokens is not None:
            real, batch_size = self._step_tokens
            self.log("perf/tokens_per_s", real / max(now - self._step_started, 1e-9), batch_size=batch_size)
            if self._last_batch_end is not None:
                self.log("perf/step_s", now - self._last_batch_end, batch_size=batch_size)
        self._last_batch_end = now
        self._step_tokens = None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA copy's update — before any callback (a checkpoint) sees the step."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model, self.trainer.global_step)
        every = self.snapshot.every_n_steps if self.snapshot is not None else None
        if every and self.trainer.global_step % every == 0:
            self.snapshot.take(self.model)

    def on_train_epoch_end(self) -> None:
        """teacher=snapshot (every epoch): the model as it is now teaches the next epoch."""
        if self.snapshot is not None and self.snapshot.every_n_steps is None:
            self.snapshot.take(self.model)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_update:  # a (micro-)batch of this step had a non-finite loss: no update at all
            self._drop_update = False
            for p in self.parameters():
                p.grad = None
        elif is_sharded(self.model):
            # FSDP reduces the model's gradients; the learned teacher weights are plain replicated parameters
            average_replicated_grads(p for p in [*self.loss_fn.parameters(), *self.layer_heads.parameters()]
                                     if p.requires_grad)
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ sharding
    def configure_model(self) -> None:
        """Under ``FSDP2Strategy`` (or Lightning's ModelParallelStrategy): shard the model with FSDP2."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, ModelParallelStrategy):
            shard_for_strategy(self.model, strategy, self.trainer.precision, self.device_mesh)
            for copy in (self.ema, self.snapshot):
                if copy is not None:
                    shard_for_strategy(copy.copy, strategy, self.trainer.precision, self.device_mesh)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping, except for sharded models (FSDP2's total norm) and fused AdamW, which Lightning's
        mixed-precision plugin refuses to clip (no gradient scaler runs with a fused optimizer here, see
        :func:`adamw_kernel`, so the gradients are unscaled)."""
        fused = bool(optimizer.defaults.get("fused"))
        by_value = gradient_clip_algorithm == "value"
        if not gradient_clip_val or not (fused or (is_sharded(self.model) and not by_value)):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if by_value:
            torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))
        else:
            self.log("train/grad_norm", clip_grad_norm_(params, float(gradient_clip_val)))
        return None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the model's groups (``m3lit.optim.parameter_groups``: encoder with layer-wise decay, heads at
        their own rates), the layer-wise teacher's heads at ``lr`` and learned teacher weights at ``teacher_lr``;
        one schedule (warm-up, then linear decay to 0) scales all."""
        lr = self.optim["lr"]
        groups = parameter_groups(self.model, lr, self.optim["weight_decay"], self.optim["head_lr"],
                                  self.optim["layer_decay"])
        if len(self.layer_heads):
            layer_params = [p for p in self.layer_heads.parameters() if p.requires_grad]
            groups.append({"params": layer_params, "weight_decay": self.optim["weight_decay"], "lr": lr,
                           "name": "layer_heads"})
        teacher_params = [p for p in self.loss_fn.parameters() if p.requires_grad]
        if teacher_params:
            groups.append({"params": teacher_params, "weight_decay": 0.0, "name": "teacher",
                           "lr": self.optim["teacher_lr"] or lr})
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=self.optim["betas"], eps=self.optim["eps"],
                                      **adamw_kernel(self.optim["implementation"],
                                                     [p for g in groups for p in g["params"]],
                                                     str(self.trainer.precision)))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.optim["warmup_steps"]
        if warmup is None:
            warmup = int(self.optim["warmup_ratio"] * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def signature_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"field: checkpoint X, this run Y"`` for every field that differs (nested mappings flattened)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += signature_differences(a, b, f"{prefix}{key}.")
        elif a != b and key in saved:
            out.append(f"{prefix}{key}: checkpoint {a!r}, this run {b!r}")
    return out


def check_teacher_heads(loss: M3Loss, active_heads: tuple[str, ...]) -> None:
    """A learned ensemble needs two heads to weigh: with one there is no ensemble loss, its parameters would get
    no gradient (DDP refuses such parameters), so they are frozen at their initial values, with a warning."""
    teacher = loss.teacher
    if any(p.requires_grad for p in teacher.parameters()) and len(active_heads) < 2:
        log.warning("teacher=%s with one active head (%s): there is no ensemble to weigh; its weights stay fixed",
                    type(teacher).__name__, ", ".join(active_heads))
        teacher.requires_grad_(False)


def _zero_loss(module: torch.nn.Module) -> torch.Tensor:
    """0 · Σ θ over the trainable parameters (local shards of DTensors): zero gradient on every parameter."""
    from torch.distributed.tensor import DTensor

    total = sum((p.to_local() if isinstance(p, DTensor) else p).sum() for p in module.parameters() if p.requires_grad)
    return total * 0.0
