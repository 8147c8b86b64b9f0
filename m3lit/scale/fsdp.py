"""FSDP2 for M3 models: a Lightning strategy, per-block sharding, and the gradient handling sharding needs.

``FSDP2Strategy`` is Lightning's ``ModelParallelStrategy`` with every process in the data-parallel (sharding)
dimension and the sharding options below; ``M3LightningModule.configure_model`` calls :func:`shard_m3_model`,
which applies ``fully_shard`` to every transformer block (the encoder's ``_no_split_modules``: layers and
embeddings), to the encoder, and to the sparse and ColBERT heads. Runs on GPUs (NCCL) and on CPU (gloo).
Checkpoints are sharded (one file per rank, torch.distributed.checkpoint) unless ``save_distributed_checkpoint``
is false; the BGE-M3 export consolidates the full state dict (:func:`full_state_dict`).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.tensor import DTensor

from ..model.m3 import M3Model
from .split_batch import enable_layer_checkpointing

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}


def parse_dtype(name: str | None, field: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"strategy.{field}={name!r}: expected one of {sorted(DTYPES)}, 'auto' or null")
    return DTYPES[name]


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2) over all ``num_nodes × devices`` processes.

    Args:
        param_dtype: dtype of the all-gathered parameters used in forward/backward: ``auto`` (bfloat16 when
            ``trainer.precision`` is ``bf16-mixed``/``bf16-true``, else the parameters' own), a dtype, or null.
        reduce_dtype: dtype of the gradient reduce-scatter (float32 keeps reductions exact under bf16).
        reshard_after_forward: free the gathered parameters after each block's forward (ZeRO-3); false keeps them
            until backward (ZeRO-2: more memory, fewer all-gathers).
        activation_checkpointing: per-layer activation checkpointing of the encoder.
        save_distributed_checkpoint: sharded checkpoints (a folder, one file per rank) instead of one file.
    """

    def __init__(self, param_dtype: str | None = "auto", reduce_dtype: str | None = "float32",
                 reshard_after_forward: bool = True, activation_checkpointing: bool = True,
                 save_distributed_checkpoint: bool = True, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        if param_dtype != "auto":
            parse_dtype(param_dtype, "param_dtype")
        parse_dtype(reduce_dtype, "reduce_dtype")
        self.param_dtype = param_dtype
        self.reduce_dtype = reduce_dtype
        self.reshard_after_forward = bool(reshard_after_forward)
        self.activation_checkpointing = bool(activation_checkpointing)

    def setup_environment(self) -> None:
        # every process shards: the data-parallel dimension spans nodes × devices, tensor parallelism is off
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def resolved_param_dtype(self, precision: str) -> torch.dtype | None:
        if self.param_dtype == "auto":
            return torch.bfloat16 if str(precision).startswith("bf16") else None
        return parse_dtype(self.param_dtype, "param_dtype")


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


def transformer_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's blocks to shard one by one: modules whose class is in its ``_no_split_modules``."""
    names = set(getattr(encoder, "_no_split_modules", None) or [])
    blocks = [m for m in encoder.modules() if type(m).__name__ in names and m is not encoder]
    if not blocks:
        raise ValueError(f"{type(encoder).__name__}: no transformer blocks found to shard (its _no_split_modules "
                         f"is {sorted(names)}); FSDP would gather the whole encoder at once")
    return blocks


def shard_m3_model(model: M3Model, mesh, param_dtype: torch.dtype | None = None,
                   reduce_dtype: torch.dtype | None = torch.float32, reshard_after_forward: bool = True,
                   activation_checkpointing: bool = False) -> M3Model:
    """Apply ``fully_shard`` to each encoder block, the encoder, and the two linear heads (in place)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_sharded(model):
        return model
    if activation_checkpointing:
        enable_layer_checkpointing(model)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    options = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    for block in transformer_blocks(model.encoder):
        fully_shard(block, **options)
    fully_shard(model.encoder, **options)
    # the heads are called on their own (not through the encoder), so each is a unit of its own
    fully_shard(model.sparse_head, **options)
    fully_shard(model.colbert_head, **options)
    return model


def average_replicated_grads(params: Iterable[nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of parameters FSDP does not manage (e.g. learned teacher weights)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is not None and not isinstance(p.grad, DTensor):
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(dist.get_world_size())


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global L2 norm of sharded (DTensor) and replicated gradients together; returns the norm.

    ||g||² = Σ_ranks Σ_local-shards g² (all-reduced) + Σ replicated g² (identical on every rank, counted once)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    device = (grads[0].to_local() if isinstance(grads[0], DTensor) else grads[0]).device
    sharded = torch.zeros((), dtype=torch.float32, device=device)
    replicated = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads:
        if isinstance(g, DTensor):
            sharded += g.to_local().float().pow(2).sum()
        else:
            replicated += g.float().pow(2).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sharded, op=dist.ReduceOp.SUM)
    total = (sharded + replicated).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        (g.to_local() if isinstance(g, DTensor) else g).mul_(coef.to(g.dtype))
    return total


def shard_for_strategy(model: M3Model, strategy: ModelParallelStrategy, precision: str | None, device_mesh) -> None:
    """Shard ``model`` for Lightning's ``ModelParallelStrategy`` (with ``FSDP2Strategy``'s options when it is one);
    a model that is already sharded is left alone."""
    if is_sharded(model):
        return
    options = {}
    if isinstance(strategy, FSDP2Strategy):
        options = dict(param_dtype=strategy.resolved_param_dtype(precision),
                       reduce_dtype=parse_dtype(strategy.reduce_dtype, "reduce_dtype"),
                       reshard_after_forward=strategy.reshard_after_forward,
                       activation_checkpointing=strategy.activation_checkpointing)
    shard_m3_model(model, device_mesh["data_parallel"], **options)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (consolidated, on CPU) state dict of a model whose parameters are DTensors, else ``None``.
    A collective under sharding: every rank must call it."""
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
