"""``trainer.precision=auto``: the numeric precision the hardware runs fastest without losing the run.

- CUDA: ``bf16-mixed`` where the GPU supports bf16 (Ampere and newer), else ``16-mixed`` (loss-scaled fp16);
- CPU: ``bf16-mixed`` on CPUs with native bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in the CPU flags),
  ``32-true`` elsewhere: without them bf16 autocast is emulated and several times slower than fp32.
Any other value is passed to Lightning unchanged.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def auto_precision(accelerator: str, flags: set[str] | None = None) -> tuple[str, str]:
    """(Lightning precision, the reason) for ``accelerator`` (cpu | gpu | cuda | auto)."""
    if uses_cuda(accelerator):
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", "CUDA with bf16 support"
        return "16-mixed", "CUDA without bf16 support (fp16 with loss scaling)"
    flags = cpu_flags() if flags is None else flags
    native = sorted(set(NATIVE_BF16_FLAGS) & flags)
    if native:
        return "bf16-mixed", f"CPU with native bf16 ({', '.join(native)})"
    return "32-true", "CPU without native bf16 (no avx512_bf16 / amx_bf16): bf16 autocast would be emulated and slower"


def resolve_precision(precision: str | int | None, accelerator: str) -> str | int | None:
    """``precision`` itself, or for ``auto`` the choice of :func:`auto_precision` (logged with its reason)."""
    if str(precision) != "auto":
        return precision
    chosen, reason = auto_precision(str(accelerator))
    log.info("trainer.precision=auto: %s (%s)", chosen, reason)
    return chosen
