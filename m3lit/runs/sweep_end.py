"""Hydra callback of ``m3lit-train -m``: when the multirun ends, its runs are compared into the sweep folder
(``compare.md``, ``compare.csv``, ``compare.png``, as ``m3lit-compare <sweep folder>`` writes them) and ``latest``
beside the sweep folders (``multirun/latest``) points at it."""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .checkpointing import link_atomically

log = logging.getLogger(__name__)


def latest_link_path(sweep_dir: str) -> str:
    """``multirun/latest`` for a sweep folder under ``multirun/…`` (relative), else ``latest`` beside the folder."""
    parts = os.path.normpath(sweep_dir).split(os.sep)
    if not os.path.isabs(sweep_dir) and len(parts) > 1:
        return os.path.join(parts[0], "latest")
    return os.path.join(os.path.dirname(os.path.abspath(sweep_dir)), "latest")


class CompareSweep(Callback):
    """Args: ``compare`` (run the comparison), ``latest`` (update the ``latest`` link), ``args`` (extra
    ``m3lit-compare`` arguments, e.g. ``[--metrics, ndcg@10]``)."""

    def __init__(self, compare: bool = True, latest: bool = True, args: Sequence[str] = ()):
        self.compare, self.latest, self.args = bool(compare), bool(latest), [str(a) for a in args]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        if not os.path.isdir(sweep_dir):
            return
        if self.latest:
            link = latest_link_path(sweep_dir)
            os.makedirs(os.path.dirname(os.path.abspath(link)), exist_ok=True)
            link_atomically(os.path.abspath(sweep_dir), link)
            print(f"{link} -> {sweep_dir}", flush=True)
        if self.compare:
            from ..cli.compare import main as compare_main

            try:
                status = compare_main([sweep_dir, *self.args])
            except Exception as err:  # the runs are done and kept: a failed comparison must not fail the sweep
                status = f"{type(err).__name__}: {err}"
            if status:
                log.warning("the sweep's comparison failed (%s); rerun it with m3lit-compare %s", status, sweep_dir)
