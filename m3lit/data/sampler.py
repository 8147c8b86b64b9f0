"""Deterministic batch plan: which lines form global batch ``step`` of ``epoch``; a pure function of
``(seed, epoch, step)`` and the data/config (never of what was iterated before).

Terms. A *group* is one sampling unit (dataset × language) × one length bucket, with per-device batch size ``b``.
A *global batch* (one optimizer step) takes ``b · W · A`` lines (W ranks, A accumulation micro-batches) from one
group, all with distinct queries. Micro-batch ``a`` of rank ``r`` is slice ``k = a·W + r`` of width ``b``.

A *pass* over a unit shuffles each of its groups, cuts them into global batches and shuffles those batches
(seeded by ``(seed, epoch, unit, pass)``). With ``length_sort_pool = k > 0`` each run of k global batches of the
shuffled group is sorted by length before cutting, so a batch holds lines of similar length (less padding).
A trailing batch of a group keeps a multiple of ``W·A`` lines; the rest (< W·A lines, different ones each pass as
the shuffle changes) is left out of that pass and counted in ``dropped``.
Epoch schedule:
- ``exhaust`` (default: alpha = 1, equal weights, no steps_per_epoch): each unit contributes its pass-0 batches
  once, all shuffled together: every line once per epoch, units in proportion to their number of batches.
- ``sampled``: each step draws its unit with ``p_u ∝ weight_u · n_u^alpha`` (n_u = lines of the unit);
  a unit's batches come from its passes 0, 1, ... in order (up/down-sampling). Steps per epoch: ``steps_per_epoch``
  or the exhaust-mode count.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import DataConfigError

_TAG_GROUP, _TAG_PASS_ORDER, _TAG_SCHEDULE = 11, 12, 13


@dataclass(frozen=True)
class BucketRows:
    unit: int
    bucket: int
    rows: np.ndarray  # int64 dataset rows
    query_hash: np.ndarray  # uint64, aligned with rows
    batch_size: int  # per device
    lengths: np.ndarray | None = None  # longest passage per row (tokens), used by length_sort_pool


@dataclass(frozen=True)
class GlobalBatch:
    unit: int
    group: int
    bucket: int
    pass_no: int
    rows: np.ndarray  # int64 dataset rows, len = per_device * W * A

    def micro_slice(self, micro: int, rank: int, world_size: int, accumulate: int) -> np.ndarray:
        width = len(self.rows) // (world_size * accumulate)
        k = micro * world_size + rank
        return self.rows[k * width : (k + 1) * width]


def cut_global_batches(rows: np.ndarray, hashes: np.ndarray, size: int, quantum: int) -> tuple[list[np.ndarray], int]:
    """Cut ``rows`` (already shuffled) into batches of ``size`` with pairwise distinct ``hashes``.

    Greedy, order preserving: a line whose query already sits in the batch being filled goes to the first later
    batch without it. Every batch is trimmed to a multiple of ``quantum``; returns (batches, lines dropped).
    """
    n = len(rows)
    if n == 0:
        return [], 0
    if np.unique(hashes).size == n:
        batches = [rows[i : i + size] for i in range(0, n, size)]
    else:
        slots: list[list[int]] = []
        last: dict[int, int] = {}
        first_open = 0
        for row, h in zip(rows.tolist(), hashes.tolist()):
            b = max(first_open, last.get(h, -1) + 1)
            while b < len(slots) and len(slots[b]) >= size:
                b += 1
            if b == len(slots):
                slots.append([])
            slots[b].append(row)
            last[h] = b
            while first_open < len(slots) and len(slots[first_open]) >= size:
                first_open += 1
        batches = [np.asarray(s, dtype=np.int64) for s in slots]
    kept, dropped = [], 0
    for b in batches:
        keep = len(b) - len(b) % quantum
        dropped += len(b) - keep
        if keep:
            kept.append(b[:keep])
    return kept, dropped


class BatchPlan:
    """Global batches of every (epoch, step). ``groups`` are listed unit by unit."""

    def __init__(self, groups: list[BucketRows], n_units: int, unit_weights: np.ndarray, *, seed: int, world_size: int,
                 accumulate: int, alpha: float = 1.0, steps_per_epoch: int | None = None,
                 length_sort_pool: int = 0):
        self.groups = groups
        self.seed, self.world_size, self.accumulate = int(seed), int(world_size), int(accumulate)
        self.quantum = self.world_size * self.accumulate
        self.unit_groups = [[g for g, grp in enumerate(groups) if grp.unit == u] for u in range(n_units)]
        self.unit_lines = np.array([sum(len(groups[g].rows) for g in gs) for gs in self.unit_groups], np.float64)
        weights = np.asarray(unit_weights, np.float64)
        self.exhaust = alpha == 1.0 and np.all(weights == weights[0]) and steps_per_epoch is None
        probs = weights * self.unit_lines ** alpha
        if not probs.sum() > 0:
            raise DataConfigError(f"dataset sampling weights {weights.tolist()} give no dataset a positive probability")
        self.unit_probs = probs / probs.sum()
        self.steps_override = steps_per_epoch
        self.length_sort_pool = int(length_sort_pool)
        self._passes: OrderedDict = OrderedDict()
        self._schedules: OrderedDict = OrderedDict()

    # ----- passes
    def unit_pass(self, epoch: int, unit: int, pass_no: int) -> tuple[list[tuple[int, np.ndarray]], int]:
        """(batches as (group, rows), dropped lines) of one pass over ``unit``; cached (a few passes)."""
        key = (epoch, unit, pass_no)
        if key not in self._passes:
            batches, dropped = [], 0
            for g in self.unit_groups[unit]:
                grp = self.groups[g]
                rng = np.random.default_rng([self.seed, _TAG_GROUP, epoch, unit, pass_no, g])
                perm = rng.permutation(len(grp.rows))
                if self.length_sort_pool > 0 and grp.lengths is not None:
                    span = self.length_sort_pool * grp.batch_size * self.quantum
                    perm = np.concatenate([c[np.argsort(grp.lengths[c], kind="stable")]
                                           for c in np.split(perm, range(span, len(perm), span))])
                cut, lost = cut_global_batches(grp.rows[perm], grp.query_hash[perm],
                                               grp.batch_size * self.quantum, self.quantum)
                batches += [(g, rows) for rows in cut]
                dropped += lost
            order = np.random.default_rng([self.seed, _TAG_PASS_ORDER, epoch, unit, pass_no]).permutation(len(batches))
            self._passes[key] = ([batches[i] for i in order], dropped)
            while len(self._passes) > 4 * max(1, len(self.unit_groups)):
                self._passes.popitem(last=False)
        self._passes.move_to_end(key)
        return self._passes[key]

    # ----- schedule
    def schedule(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(unit of each step, how many times that unit was drawn before the step) for one epoch."""
        if epoch not in self._schedules:
            counts = np.array([len(self.unit_pass(epoch, u, 0)[0]) for u in range(len(self.unit_groups))])
            rng = np.random.default_rng([self.seed, _TAG_SCHEDULE, epoch])
            if self.exhaust:
                units = rng.permutation(np.repeat(np.arange(len(counts)), counts))
            else:
                n_steps = int(self.steps_override) if self.steps_override is not None else int(counts.sum())
                probs = np.where(counts > 0, self.unit_probs, 0.0)
                units = rng.choice(len(counts), size=n_steps, p=probs / probs.sum())
            occurrence = np.zeros(len(units), np.int64)
            for u in range(len(counts)):
                where = np.flatnonzero(units == u)
                occurrence[where] = np.arange(where.size)
            self._schedules[epoch] = (units, occurrence)
            while len(self._schedules) > 2:
                self._schedules.popitem(last=False)
        return self._schedules[epoch]

    def steps_per_epoch(self, epoch: int = 0) -> int:
        """Optimizer steps (global batches) in ``epoch``."""
        return int(len(self.schedule(epoch)[0]))

    def global_batch(self, epoch: int, step: int) -> GlobalBatch:
        units, occurrence = self.schedule(epoch)
        unit, k, pass_no = int(units[step]), int(occurrence[step]), 0
        while True:
            batches, _ = self.unit_pass(epoch, unit, pass_no)
            if not batches:
                raise RuntimeError(f"unit {unit} yields no batch")
            if k < len(batches):
                group, rows = batches[k]
                return GlobalBatch(unit, group, self.groups[group].bucket, pass_no, rows)
            k -= len(batches)
            pass_no += 1

    def dropped_lines(self, epoch: int) -> int:
        """Lines left out of epoch ``epoch``'s first pass (trailing remainders smaller than W·A)."""
        return int(sum(self.unit_pass(epoch, u, 0)[1] for u in range(len(self.unit_groups))))
