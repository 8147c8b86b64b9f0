"""Non-finite losses: every rank learns whether any rank's loss is NaN/inf, so all stop or all skip together."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.distributed as dist


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss is NaN or infinite and ``train_step.nonfinite`` is ``stop``."""


def all_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (one all-reduce of a scalar when distributed)."""
    flag = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def describe(step: int, head_losses: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None) -> str:
    values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in head_losses.items())
    where = ", ".join(f"{k}={meta[k]}" for k in ("dataset", "language", "bucket") if meta and k in meta)
    batch = f"; batch {where}" if where else ""
    return (f"non-finite training loss at optimizer step {step} (on this or another rank){batch}"
            f"; this rank's per-head losses: {values or 'n/a'}. Lower the learning rate, check the data, or set "
            "train_step.nonfinite=skip to skip such steps")
