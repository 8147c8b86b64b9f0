"""The model at an earlier state, behind ``teacher=snapshot``: a frozen copy taken at the end of every epoch (or
every N optimizer steps) whose scores of each training line's group are cached per line.

Cache keys: (snapshot version, dataset, line, the group's passage tokens) — the group a line gets can change
between epochs (sampled negatives), its scores then are computed anew. Values: the copy's raw (heads, G) group
scores. Each rank keeps the lines it sees; the cache is written next to the checkpoints
(``<checkpoint dir>/teacher_cache/snapshot-rank<r>.pt``) whenever a checkpoint is saved, with the data fingerprint
and the version, and read back on resume when both match (else it starts empty: a miss only costs a forward pass
of the copy, never a different target — the copy itself is in the checkpoint)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..files import write_file_atomically
from .ema_model import FrozenCopy

log = logging.getLogger(__name__)


class SnapshotModel(FrozenCopy):
    """θ_s: the model as it was at the last snapshot (no gradient, eval mode), version 0 until the first one."""

    def __init__(self, model: nn.Module, every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"teacher.every_n_steps={every_n_steps}: expected ≥ 1 (or null: every epoch)")
        super().__init__(model)
        self.every_n_steps = every_n_steps
        self.version = 0
        self.cache: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    @property
    def active(self) -> bool:
        return self.version > 0

    def take(self, model: nn.Module) -> None:
        """θ_s ← θ; a new version, the old version's cache dropped."""
        self.blend(model, 1.0)
        self.version += 1
        self.cache.clear()

    # ------------------------------------------------------------------ cache
    def keys(self, meta: Mapping[str, Any] | None, passages: Mapping[str, torch.Tensor], group: int,
             ) -> list[str] | None:
        """One key per query of the batch, or None when the batch does not name its lines (``meta["rows"]``)."""
        if not meta or "rows" not in meta or "dataset" not in meta:
            return None
        ids, mask = passages["input_ids"], passages["attention_mask"].bool()
        out = []
        for i, row in enumerate(meta["rows"]):
            digest = hashlib.sha1()
            for j in range(i * group, (i + 1) * group):
                digest.update(ids[j][mask[j]].to("cpu", torch.int64).numpy().tobytes() + b"|")
            out.append(f"{self.version}:{meta['dataset']}:{int(row)}:{digest.hexdigest()}")
        return out

    def lookup(self, keys: Sequence[str] | None) -> torch.Tensor | None:
        """(B, heads, G) cached scores when every key is cached, else None."""
        if keys is None or not all(k in self.cache for k in keys):
            return None
        self.hits += len(keys)
        return torch.stack([self.cache[k] for k in keys])

    def store(self, keys: Sequence[str] | None, scores: torch.Tensor) -> None:
        if keys is None:
            return
        self.misses += len(keys)
        for key, value in zip(keys, scores.detach().to("cpu", torch.float32)):
            self.cache[key] = value.clone()

    def save(self, path: str, fingerprint: Any) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        keys = sorted(self.cache)
        state = {"version": self.version, "fingerprint": _canonical(fingerprint), "keys": keys,
                 "scores": torch.stack([self.cache[k] for k in keys]) if keys else torch.empty(0)}
        write_file_atomically(path, lambda f: torch.save(state, f), binary=True)

    def load(self, path: str, fingerprint: Any) -> str:
        """Read the cache of ``path`` when its version and data fingerprint match; returns what happened."""
        if not os.path.isfile(path):
            return "no cache file: scores are computed as lines come"
        saved = torch.load(path, weights_only=True)
        if saved.get("fingerprint") != _canonical(fingerprint):
            return "the training data changed since the cache was written: it is not used"
        if saved.get("version") != self.version:
            return f"the cache is of snapshot {saved.get('version')}, the checkpoint's is {self.version}: not used"
        self.cache = {k: v for k, v in zip(saved["keys"], saved["scores"])}
        return f"{len(self.cache)} cached line scores of snapshot {self.version} read"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
