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


def describe(step: int, head_losses: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None,
             skipping: bool = False) -> str:
    values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in head_losses.items())
    where = ", ".join(f"{k}={meta[k]}" for k in ("dataset", "language", "bucket") if meta and k in meta)
    batch = f"; batch {where}" if where else ""
    advice = "Lower the learning rate or check the data" + ("" if skipping else
                                                              ", or set train_step.nonfinite=skip to skip such steps")
    return (f"non-finite training loss at optimizer step {step} (on this or another rank){batch}"
            f"; this rank's per-head losses: {values or 'n/a'}. {advice}")


class SkipCounter:
    """Counts steps skipped for a non-finite loss (``train_step.nonfinite=skip``) and stops the run past the limits:
    ``max_consecutive`` skips in a row or ``max_total`` in all (None: no limit)."""

    def __init__(self, max_consecutive: int | None = 5, max_total: int | None = 50):
        for name, value in (("nonfinite_max_consecutive", max_consecutive), ("nonfinite_max_total", max_total)):
            if value is not None and int(value) < 1:
                raise ValueError(f"train_step.{name} must be >= 1 or null, got {value}")
        self.max_consecutive = None if max_consecutive is None else int(max_consecutive)
        self.max_total = None if max_total is None else int(max_total)
        self.total = 0
        self.consecutive = 0

    def finite(self) -> None:
        self.consecutive = 0

    def skipped(self, step: int, message: str) -> None:
        self.total += 1
        self.consecutive += 1
        for count, limit, what, key in ((self.consecutive, self.max_consecutive, "in a row", "consecutive"),
                                        (self.total, self.max_total, "in all", "total")):
            if limit is not None and count >= limit:
                raise NonFiniteLossError(
                    f"stopping at optimizer step {step}: {count} steps skipped for a non-finite loss {what} (limit "
                    f"train_step.nonfinite_max_{key}={limit}); the model is not exported. Last: {message}")

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.total = int(state.get("total", 0))
        self.consecutive = int(state.get("consecutive", 0))
