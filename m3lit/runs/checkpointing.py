"""Checkpoints that survive a kill: periodic ``checkpoints/last.ckpt``, written atomically, on signals too.

Every checkpoint is written to ``<path>.tmp`` and renamed into place by rank 0 once every rank has written (a file,
or a folder for sharded FSDP checkpoints), so a reader sees either the previous complete checkpoint or the new one.
``last.ckpt`` is a symbolic link to the newest ``step-<N>.ckpt`` (replaced atomically); the ``keep`` newest step
checkpoints are kept.

Signals: SIGTERM (what ``kill``, SLURM and Kubernetes send before stopping a job) ends the step in progress, writes
the checkpoint and stops the run; SIGUSR1 writes a checkpoint after the step in progress and training continues.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import zipfile
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..files import remove_path, replace_path

log = logging.getLogger(__name__)

LAST = "last.ckpt"
STEP_PATTERN = re.compile(r"^step-(\d+)\.ckpt$")


def save_checkpoint_atomically(trainer: L.Trainer, path: str, weights_only: bool = False) -> str:
    """``trainer.save_checkpoint`` into ``<path>.tmp``, then renamed to ``path`` (collective: every rank calls it)."""
    tmp = path + ".tmp"
    if trainer.is_global_zero:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        remove_path(tmp)
    trainer.strategy.barrier("m3lit.checkpoint.begin")
    trainer.save_checkpoint(tmp, weights_only=weights_only)  # ends with a barrier
    if trainer.is_global_zero:
        replace_path(tmp, path)
    trainer.strategy.barrier("m3lit.checkpoint.end")
    return path


def link_atomically(target: str, link: str) -> None:
    """Make ``link`` a relative symbolic link to ``target``, replacing any previous one in one rename."""
    tmp = link + ".tmp-link"
    remove_path(tmp)
    os.symlink(os.path.relpath(target, os.path.dirname(os.path.abspath(link))), tmp)
    os.replace(tmp, link)


def check_checkpoint_file(path: str) -> None:
    """Refuse, before training starts, a ``resume_from`` that cannot be a checkpoint (missing, empty, corrupt)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"resume_from={path}: no such file or folder")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, ".metadata")):
            raise ValueError(f"resume_from={path}: a folder without '.metadata' is not a sharded (FSDP) checkpoint")
        return
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"resume_from={path}: the file is empty (0 bytes), an interrupted write? Resume from "
                         f"another checkpoint (e.g. checkpoints/{LAST} or an earlier step-*.ckpt)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"resume_from={path}: not a PyTorch checkpoint ({size} bytes that are not a torch.save zip "
                         "archive): a corrupt or truncated file?")


class PeriodicCheckpoint(L.Callback):
    """Writes ``<dirpath>/step-<N>.ckpt`` every ``every_n_steps`` optimizer steps, at the end of training and on
    SIGTERM / SIGUSR1; ``last.ckpt`` links to the newest. Resume with ``resume_from=<dirpath>/last.ckpt``.

    Args:
        dirpath: folder of the checkpoints (default: ``<trainer.default_root_dir>/checkpoints``).
        every_n_steps: period in optimizer steps (0: only at the end and on signals).
        keep: how many step checkpoints to keep (the newest; at least 1).
        at_end: also write one when training ends.
        on_signal: handle SIGTERM (checkpoint, then stop) and SIGUSR1 (checkpoint, continue).
    """

    def __init__(self, dirpath: str | None = None, every_n_steps: int = 100, keep: int = 2, at_end: bool = True,
                 on_signal: bool = True):
        if int(every_n_steps) < 0:
            raise ValueError(f"callbacks.checkpoint.every_n_steps must be >= 0, got {every_n_steps}")
        if int(keep) < 1:
            raise ValueError(f"callbacks.checkpoint.keep must be >= 1, got {keep}")
        self.dirpath = dirpath
        self.every_n_steps = int(every_n_steps)
        self.keep = int(keep)
        self.at_end = bool(at_end)
        self.on_signal = bool(on_signal)
        self.last_saved_step: int | None = None
        self._checked_step: int | None = None
        self._usr1 = False
        self._previous_usr1: Any = None

    # ------------------------------------------------------------------ paths
    def directory(self, trainer: L.Trainer) -> str:
        return self.dirpath or os.path.join(trainer.default_root_dir, "checkpoints")

    def last_path(self, trainer: L.Trainer) -> str:
        return os.path.join(self.directory(trainer), LAST)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.on_signal and stage == "fit" and hasattr(signal, "SIGUSR1"):
            try:
                self._previous_usr1 = signal.signal(signal.SIGUSR1, self._on_usr1)
            except ValueError:  # not the main thread
                self._previous_usr1 = None
        if stage == "fit" and trainer.is_global_zero:  # the folder exists once the handlers are in place
            os.makedirs(self.directory(trainer), exist_ok=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None

    def _on_usr1(self, signum, frame) -> None:
        self._usr1 = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._checked_step:  # later micro-batches of the same optimizer step
            return
        self._checked_step = step
        periodic = self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
        if self.on_signal and self._signal_received(trainer):
            log.info("SIGUSR1: writing a checkpoint at step %d", step)
            periodic = True
        if periodic and step != self.last_saved_step:
            self.save(trainer)

    def _signal_received(self, trainer: L.Trainer) -> bool:
        flag = self._usr1
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            tensor = torch.tensor([1.0 if flag else 0.0], device=trainer.strategy.root_device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flag = bool(tensor.item())
        self._usr1 = False
        return flag

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and trainer.global_step != self.last_saved_step:
            self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """SIGTERM: Lightning stops after the step in progress (a consistent state): write it before exiting."""
        if self.on_signal and isinstance(exception, SIGTERMException) and trainer.global_step != self.last_saved_step:
            path = self.save(trainer)
            if trainer.is_global_zero:
                print(f"SIGTERM: checkpoint at step {trainer.global_step}: {path}; continue with "
                      f"resume_from={self.last_path(trainer)}", flush=True)

    # ------------------------------------------------------------------ writing
    def save(self, trainer: L.Trainer) -> str:
        """Write ``step-<N>.ckpt`` atomically, point ``last.ckpt`` at it, drop the oldest beyond ``keep``."""
        if trainer.fast_dev_run or trainer.sanity_checking:
            return ""
        directory = self.directory(trainer)
        path = os.path.join(directory, f"step-{trainer.global_step:07d}.ckpt")
        save_checkpoint_atomically(trainer, path)
        self.last_saved_step = trainer.global_step
        if trainer.is_global_zero:
            link_atomically(path, self.last_path(trainer))
            for old in self.step_checkpoints(directory)[:-self.keep]:
                remove_path(old)
        trainer.strategy.barrier("m3lit.checkpoint.pruned")
        return path

    @staticmethod
    def step_checkpoints(directory: str) -> list[str]:
        """``step-<N>.ckpt`` in ``directory``, oldest first."""
        if not os.path.isdir(directory):
            return []
        found = [(int(m.group(1)), name) for name in os.listdir(directory) if (m := STEP_PATTERN.match(name))]
        return [os.path.join(directory, name) for _, name in sorted(found)]
