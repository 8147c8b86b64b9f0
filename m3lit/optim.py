"""The optimiser of ``M3LightningModule`` (config group ``optim``): AdamW parameter groups per part (encoder, heads)
with per-head rates and layer-wise rate decay, the AdamW kernel choice, and the warm-up / linear-decay schedule."""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .model import M3Model

HEAD_MODULES = {"sparse": "sparse_head", "colbert": "colbert_head"}
ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")


def check_adamw_implementation(name: str) -> str:
    if name not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"optim.implementation={name!r}: expected one of {ADAMW_IMPLEMENTATIONS}")
    return name


def adamw_kernel(implementation: str, params: Sequence[torch.Tensor], precision: str = "32-true") -> dict[str, bool]:
    """``torch.optim.AdamW`` keyword arguments for ``optim.implementation``: ``fused`` (one kernel over all
    parameters: on one CPU thread 12 ms a step for 17M parameters against 40 ms ``foreach`` and 67 ms ``for_loop``),
    ``foreach`` (batched ops, torch's CUDA default), ``for_loop`` (one parameter at a time, torch's CPU default) or
    ``auto``: fused where every parameter is a plain floating-point tensor (FSDP2's sharded DTensor parameters keep
    torch's default) and no float16 gradient scaler runs (``precision`` 16-mixed: Lightning clips scaled gradients
    only with an unfused optimizer)."""
    scaled = "16" in precision and "bf16" not in precision
    if implementation == "fused" and scaled:
        raise ValueError(f"optim.implementation=fused with trainer.precision={precision}: the float16 gradient "
                         f"scaler needs an unfused AdamW (use auto, foreach or for_loop)")
    if implementation == "auto":
        plain = all(type(p) in (torch.Tensor, nn.Parameter) and p.is_floating_point() for p in params)
        implementation = "fused" if plain and params and not scaled else "default"
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}.get(
        implementation, {})


def check_head_lr(head_lr: Mapping[str, float | None] | None) -> dict[str, float | None]:
    unknown = set(head_lr or {}) - set(HEAD_MODULES)
    if unknown:
        raise ValueError(f"optim.head_lr: unknown head(s) {sorted(unknown)}; "
                         f"heads with weights: {sorted(HEAD_MODULES)}")
    return {h: (None if v is None else float(v)) for h, v in (head_lr or {}).items()}


def parameter_parts(model: M3Model) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Trainable parameters by part: ``encoder``, ``sparse``, ``colbert`` (the dense head has no weights)."""
    parts: dict[str, list[tuple[str, torch.nn.Parameter]]] = {"encoder": [], **{h: [] for h in HEAD_MODULES}}
    owner = {module: head for head, module in HEAD_MODULES.items()}
    for name, param in model.named_parameters():
        if param.requires_grad:
            parts[owner.get(name.split(".", 1)[0], "encoder")].append((name, param))
    return parts


LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def encoder_depths(names: Sequence[str]) -> tuple[dict[str, int], int]:
    """Depth of each encoder parameter for layer-wise learning-rate decay, and the top depth L + 1: 0 for the
    embeddings (a name with ``embed``), i + 1 for transformer layer i (``...layer.<i>.`` / ``layers.<i>.``), L + 1
    for everything above the layers (pooler, final norm). L = the number of layers found."""
    layers = {name: int(m.group(1)) for name in names if (m := LAYER_INDEX.search(name))}
    top = max(layers.values(), default=-1) + 2
    return {name: layers[name] + 1 if name in layers else 0 if "embed" in name.lower() else top
            for name in names}, top


def check_layer_decay(value: float) -> float:
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"optim.layer_decay={value!r}: expected 0 < γ ≤ 1 (1: one rate for the whole encoder)")
    return float(value)


def parameter_groups(model: M3Model, lr: float, weight_decay: float, head_lr: Mapping[str, float | None],
                     layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups of the model's trainable parameters: the encoder at ``lr``, each head at ``head_lr[head]``
    (None: ``lr``); with ``layer_decay`` γ < 1 the encoder's rate falls by γ per layer below the top,
    lr · γ^(L + 1 − depth) (:func:`encoder_depths`); no weight decay on biases and norms. Empty groups dropped."""
    groups = []
    for part, params in parameter_parts(model).items():
        part_lr = head_lr.get(part)
        part_lr = lr if part_lr is None else part_lr
        depths, top = encoder_depths([n for n, _ in params]) if part == "encoder" and layer_decay != 1.0 else ({}, 0)
        by_depth: dict[int, list[tuple[str, nn.Parameter]]] = {}  # depth top: the part's own rate
        for name, param in params:
            by_depth.setdefault(depths.get(name, top), []).append((name, param))
        for depth, named in by_depth.items():
            group_lr = part_lr * layer_decay ** (top - depth)
            name = part if depth == top else f"{part}/depth{depth}"
            decays = [p.ndim >= 2 and "norm" not in n.lower() for n, p in named]
            groups += [{"params": [p for (_, p), d in zip(named, decays) if d], "weight_decay": weight_decay,
                        "lr": group_lr, "name": name},
                       {"params": [p for (_, p), d in zip(named, decays) if not d], "weight_decay": 0.0,
                        "lr": group_lr, "name": f"{name}/no_decay"}]
    return [g for g in groups if g["params"]]


def warmup_then_linear_decay(warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate factor at optimizer step ``step``: (step + 1) / (warmup + 1) during the warm-up, then
    linear to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor
