"""Frozen copies of the model for the teachers: the momentum (EMA) copy behind ``teacher=ema`` (and the ``ema``
source of ``teacher=mix``); ``m3lit.loss.snapshot`` builds the earlier-state copy on the same base."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .teacher import EmaSettings


class FrozenCopy(nn.Module):
    """A copy of the model without gradient, always in eval mode (deterministic targets). It is a submodule of
    the LightningModule, so its weights are in every checkpoint and sharded like the model under FSDP
    (``configure_model``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.copy = copy.deepcopy(model).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenCopy":
        return super().train(False)

    @torch.no_grad()
    def blend(self, model: nn.Module, weight: float) -> None:
        """θ' ← (1 − weight)·θ' + weight·θ (weight 1: θ' = θ); buffers copied."""
        for frozen, current in zip(self.copy.parameters(), model.parameters()):
            if weight == 1.0:
                frozen.copy_(current.detach())
            else:
                frozen.lerp_(current.detach().to(frozen.dtype), weight)
        for frozen, current in zip(self.copy.buffers(), model.buffers()):
            frozen.copy_(current)

    def memory_bytes(self) -> int:
        """Bytes of this copy's parameters and buffers (on this rank: its shards under FSDP)."""
        tensors = list(self.copy.parameters()) + list(self.copy.buffers())
        return sum(_local(t).numel() * t.element_size() for t in tensors)


class EmaModel(FrozenCopy):
    """θ' — the momentum copy, updated after optimizer steps by :meth:`update` (``EmaSettings``)."""

    def __init__(self, model: nn.Module, settings: EmaSettings):
        super().__init__(model)
        self.settings = settings
        self.last_update: int | None = None

    def active(self, step: int) -> bool:
        """Whether its scores are the teacher's at optimizer step ``step``."""
        return step >= self.settings.start_step

    def update(self, model: nn.Module, step: int) -> bool:
        """After optimizer step ``step`` (the count of steps done): θ' ← d·θ' + (1 − d)·θ every ``update_every``
        steps, d = ``decay`` from ``start_step`` on, 0 before (θ' = θ). Buffers are copied. Returns whether it
        updated."""
        s = self.settings
        if step == self.last_update or step % s.update_every:
            return False
        self.blend(model, 1.0 - (s.decay if step >= s.start_step else 0.0))
        self.last_update = step
        return True


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t
