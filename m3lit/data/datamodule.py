"""``M3DataModule``: multilingual FlagEmbedding jsonl → batches where every optimizer step's global batch (all
ranks × all accumulation micro-batches) comes from one dataset, one language and one length bucket.

Batch (per rank, per micro-batch)::

    {"queries":  {"input_ids": Long[B, Lq], "attention_mask": Long[B, Lq]},
     "passages": {"input_ids": Long[B*G, Lp], "attention_mask": Long[B*G, Lp]},  # rows i*G.. : pos, then negs
     "teacher_scores": Float[B, G] | None,
     "no_in_batch_neg": bool,
     "meta": {dataset, language, bucket, real_tokens, padded_tokens, padding_fraction, ...}}

``real_tokens`` = non-pad tokens of queries + passages; ``padded_tokens`` = all tokens after padding (what the
encoder computes); ``padding_fraction`` = 1 - real/padded. ``meta["rows"]`` (a list) identifies the lines; the
other meta values are str/int/float.

Distributed use: world size, rank and ``accumulate_grad_batches`` are read from the trainer in :meth:`setup`
(or from the constructor without a trainer). The train loader wraps an ``IterableDataset``, so Lightning does not
add a DistributedSampler. Resume: :meth:`state_dict` stores (epoch, micro-batches consumed in that epoch); after
:meth:`load_state_dict` the loader continues exactly where the checkpoint was taken.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from .buckets import PAPER_BATCH_SIZES, PAPER_BOUNDARIES, BucketTable
from .dataset import BadLineReport, DatasetView, Unit, load_dataset
from .errors import DataConfigError, EmptyDatasetError
from .lengths import LENGTH_MODES, tokenizer_fingerprint
from .sampler import BatchPlan, BucketRows
from .sources import DatasetOptions, resolve_datasets
from .stream import EpochLoader, MicroBatchStream
from .tables import HUB_PREFIX, source_stat

log = logging.getLogger(__name__)
DATA_CHANGE_ACTIONS = ("error", "restart")
# MicroBatchStream shards micro-batches over DataLoader workers itself, so its __len__ stays exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class M3DataModule(L.LightningDataModule):
    """Training data for M3 fine-tuning (see the module docstring for the batch layout).

    Args:
        train: file, folder, glob, or a list of them; an entry may be a mapping ``{path, name?, <option>...}``
            (one dataset of all its files, with its own options). A plain entry gives one dataset per file.
        tokenizer: the model's HF tokenizer.
        seed: batches are a pure function of (seed, epoch, step).
        group_size, query_max_len, passage_max_len, prompt, prompt_format, passage_prompt, passage_prompt_format,
        language, no_in_batch_neg, weight:
            default per-dataset options (see :class:`~m3lit.data.sources.DatasetOptions`).
        bucket_boundaries: token boundaries of the length buckets (a line's longest positive, or longest positive
            or negative when group_size > 1; truncated).
        batch_size: per-device queries per micro-batch: one int, or one per bucket.
        token_budget: if set, per-device batch = token_budget // (G · longest passage in the bucket).
        sampling_alpha: dataset sampling ``p ∝ weight · n^alpha`` (1: proportional to size, 0: uniform).
        steps_per_epoch: optimizer steps per epoch (default: one pass over the data).
        length_sort_pool: if k > 0, sort each run of k shuffled global batches of a bucket by length before cutting
            it into batches (similar lengths in a batch: less padding; batch order stays shuffled).
        length_estimate: ``exact`` (tokenize every passage once, cached), ``sample`` (fitted chars→tokens ratio,
            fast) or ``auto`` (exact for files up to 50k lines, else sample).
        skip_bad_lines: skip (count, report) invalid lines instead of raising.
        on_data_change: resuming from a checkpoint whose data fingerprint (files, sizes, modification times, line
            counts, dataset and batching options) differs from this run's: ``error`` (default: name what changed)
            or ``restart`` (warn and begin a fresh epoch of the new data).
        cache_dir: where indexes and decompressed ``.gz`` copies are cached.
        world_size, rank, accumulate_grad_batches: used when no trainer is attached.
    """

    def __init__(
        self,
        train,
        tokenizer,
        seed: int = 0,
        *,
        group_size: int = 8,
        query_max_len: int = 512,
        passage_max_len: int = 8192,
        prompt: str | None = None,
        prompt_format: str = "{}{}",
        passage_prompt: str | None = None,
        passage_prompt_format: str = "{}{}",
        language: str | None = None,
        no_in_batch_neg: bool = False,
        weight: float = 1.0,
        bucket_boundaries: Sequence[int] = PAPER_BOUNDARIES,
        batch_size: int | Sequence[int] | None = PAPER_BATCH_SIZES,
        token_budget: int | None = None,
        sampling_alpha: float = 1.0,
        steps_per_epoch: int | None = None,
        length_sort_pool: int = 0,
        length_estimate: str = "auto",
        skip_bad_lines: bool = False,
        on_data_change: str = "error",
        pad_to_multiple_of: int = 8,
        cache_dir: str = ".m3lit_cache",
        num_workers: int = 0,
        pin_memory: bool = False,
        world_size: int = 1,
        rank: int = 0,
        accumulate_grad_batches: int = 1,
    ):
        super().__init__()
        if tokenizer is None:
            raise DataConfigError("M3DataModule needs the model's tokenizer")
        if length_estimate not in LENGTH_MODES:
            raise DataConfigError(f"length_estimate must be one of {LENGTH_MODES}, got '{length_estimate}'")
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.defaults = DatasetOptions(
            weight=float(weight), group_size=int(group_size), query_max_len=int(query_max_len),
            passage_max_len=int(passage_max_len), prompt=prompt, prompt_format=prompt_format,
            passage_prompt=passage_prompt, passage_prompt_format=passage_prompt_format, language=language,
            no_in_batch_neg=bool(no_in_batch_neg),
        )
        self.specs = resolve_datasets(_plain(train), self.defaults)
        self.table = BucketTable.from_config(_plain(bucket_boundaries), _plain(batch_size), token_budget)
        self.sampling_alpha = float(sampling_alpha)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.length_sort_pool = int(length_sort_pool)
        self.length_estimate = length_estimate
        self.skip_bad_lines = bool(skip_bad_lines)
        if on_data_change not in DATA_CHANGE_ACTIONS:
            raise DataConfigError(f"data.on_data_change must be one of {DATA_CHANGE_ACTIONS}, got '{on_data_change}'")
        self.on_data_change = on_data_change
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        self.cache_dir = str(cache_dir)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.world_size, self.rank, self.accumulate = int(world_size), int(rank), int(accumulate_grad_batches)
        self.views: list[DatasetView] | None = None
        self.units: list[Unit] = []
        self.bad_line_reports: list[BadLineReport] = []
        self.plan: BatchPlan | None = None
        self._stream: MicroBatchStream | None = None
        self._loader: EpochLoader | None = None
        self._next_epoch = 0
        self._resume: tuple[int, int] | None = None

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        """Build the on-disk indexes once per node (the other ranks then load them in :meth:`setup`)."""
        self._load_views()

    def _load_views(self) -> list[DatasetView]:
        if self.views is None:
            fingerprint = tokenizer_fingerprint(self.tokenizer)
            reports: list[BadLineReport] = []
            self.views = [
                load_dataset(spec, self.tokenizer, cache_dir=self.cache_dir, length_mode=self.length_estimate,
                             fingerprint=fingerprint, skip_bad_lines=self.skip_bad_lines, reports=reports)
                for spec in self.specs
            ]
            self.bad_line_reports = reports
            self.units = [u for d, view in enumerate(self.views) for u in view.units(d)]
        return self.views

    def setup(self, stage: str | None = None) -> None:
        """Index the data (cached) and build the batch plan for this rank; only for ``fit``."""
        if stage not in (None, "fit"):
            return
        if self.trainer is not None:
            self.world_size = int(self.trainer.world_size)
            self.rank = int(self.trainer.global_rank)
            self.accumulate = int(self.trainer.accumulate_grad_batches)
        if not 0 <= self.rank < self.world_size:
            raise DataConfigError(f"rank {self.rank} outside world size {self.world_size}")
        views = self._load_views()
        groups: list[BucketRows] = []
        for u, unit in enumerate(self.units):
            view = views[unit.dataset]
            buckets = self.table.bucket_of(view.lengths[unit.rows])
            for b in np.unique(buckets):
                rows = unit.rows[buckets == b]
                size = self.table.batch_size_for(int(b), view.spec.options.group_size, int(view.lengths[rows].max()),
                                                 self.pad_to_multiple_of)
                groups.append(BucketRows(u, int(b), rows, view.query_hash[rows], size, view.lengths[rows]))
        weights = np.array([views[u.dataset].spec.options.weight for u in self.units])
        self.plan = BatchPlan(groups, len(self.units), weights, seed=self.seed, world_size=self.world_size,
                              accumulate=self.accumulate, alpha=self.sampling_alpha,
                              steps_per_epoch=self.steps_per_epoch, length_sort_pool=self.length_sort_pool)
        quantum = self.world_size * self.accumulate
        unused = sum(len(g.rows) for g in groups if len(g.rows) < quantum)
        if unused:
            log.warning("%d line(s) sit in (dataset, language, bucket) groups smaller than world_size × "
                        "accumulate_grad_batches = %d and are never used; merge buckets or datasets to use them",
                        unused, quantum)
        if self.plan.steps_per_epoch(0) == 0:
            raise EmptyDatasetError(
                f"no global batch can be formed: every dataset has fewer than world_size × accumulate_grad_batches"
                f" = {self.world_size * self.accumulate} lines in each length bucket"
            )
        if self._resume is None:  # a new fit starts at epoch 0 (load_state_dict, called after setup, may move it)
            self._next_epoch = 0
        self._stream = MicroBatchStream(self.plan, views, self.units, self.table, self.tokenizer, rank=self.rank,
                                        pad_to_multiple_of=self.pad_to_multiple_of)
        self._loader = None

    # ------------------------------------------------------------------ loading
    def train_dataloader(self) -> EpochLoader:
        if self._stream is None:
            self.setup("fit")
        self._loader = EpochLoader(self._stream, self._begin_epoch, num_workers=self.num_workers,
                                   pin_memory=self.pin_memory)
        return self._loader

    def _begin_epoch(self) -> None:
        """Called by the loader at each ``iter()``: every iteration is the next data epoch, except the first one
        after :meth:`load_state_dict`, which continues the checkpointed epoch (or starts the next one if the
        checkpoint was taken at its end). The epoch is counted here, not read from the trainer, whose epoch
        counter can skip a value when a run resumes from a checkpoint taken on an epoch's last batch."""
        epoch, start = self._next_epoch, 0
        if self._resume is not None:
            epoch, start = self._resume
            self._stream.begin_epoch(epoch)
            if start >= len(self._stream):
                epoch, start = epoch + 1, 0
            self._resume = None
        self._stream.begin_epoch(epoch, start)
        self._next_epoch = epoch + 1
        dropped = self.plan.dropped_lines(epoch)
        if dropped and self.rank == 0:
            log.info("epoch %d: %d line(s) left for a later pass (bucket remainders smaller than W×A)", epoch, dropped)

    def global_batch_rows(self, epoch: int, step: int) -> tuple[str, str, int, list[int]]:
        """(dataset, language, bucket, rows) of global batch ``step`` of ``epoch``, before slicing per rank."""
        gb = self.plan.global_batch(epoch, step)
        unit = self.units[gb.unit]
        return self.views[unit.dataset].name, unit.language, gb.bucket, gb.rows.tolist()

    # ------------------------------------------------------------------ resume
    def _position(self) -> tuple[int, int]:
        """(data epoch, micro-batches of it consumed by training)."""
        if self._loader is None or self._stream is None:
            return self._next_epoch, 0
        if self.trainer is not None:
            # the loader runs one batch ahead of training (Lightning prefetches): use the trainer's count
            return self._stream.epoch, int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return self._stream.epoch, int(self._loader.consumed)

    def fingerprint(self) -> dict:
        """What the batch plan depends on besides the seed: per dataset its files (path, size, modification time,
        usable lines) and options, and the batching options."""
        datasets = {}
        for view in self._load_views():
            files = []
            for index in view.files:
                if index.path.startswith(HUB_PREFIX):  # a hub dataset: its fingerprint is in the index key
                    files.append([index.path, 0, 0, len(index), index.key])
                    continue
                size, mtime = source_stat(index.path)
                files.append([os.path.abspath(index.path), int(size), int(mtime), len(index)])
            datasets[view.name] = {"files": files, "options": dataclasses.asdict(view.spec.options)}
        batching = {"bucket_boundaries": list(self.table.boundaries), "batch_size": list(self.table.batch_size),
                    "token_budget": self.table.token_budget, "sampling_alpha": self.sampling_alpha,
                    "steps_per_epoch": self.steps_per_epoch, "length_sort_pool": self.length_sort_pool,
                    "length_estimate": self.length_estimate, "pad_to_multiple_of": self.pad_to_multiple_of}
        return {"datasets": datasets, "batching": batching}

    def state_dict(self) -> dict:
        epoch, micro_step = self._position()
        return {"epoch": epoch, "micro_step": micro_step, "seed": self.seed, "world_size": self.world_size,
                "accumulate_grad_batches": self.accumulate, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state_dict: Mapping) -> None:
        epoch, micro = int(state_dict["epoch"]), int(state_dict["micro_step"])
        changes = fingerprint_changes(state_dict.get("fingerprint"), self.fingerprint())
        if changes:
            summary = "; ".join(changes[:10]) + (f"; … {len(changes) - 10} more" if len(changes) > 10 else "")
            if self.on_data_change == "error":
                raise DataConfigError(f"resume_from: the training data changed since the checkpoint: {summary}. "
                                      "Resume on the original data, or set data.on_data_change=restart to continue "
                                      "training with a fresh epoch of the new data")
            log.warning("the training data changed since the checkpoint (%s): data.on_data_change=restart, "
                        "beginning a fresh epoch %d of the new data", summary, epoch + 1)
            self._resume = (epoch + 1, 0)
            self._next_epoch = epoch + 1
            return
        if int(state_dict.get("seed", self.seed)) != self.seed:
            log.warning("resuming with seed %d, checkpoint used %s: batches differ from the original run",
                        self.seed, state_dict.get("seed"))
        old_accumulate = int(state_dict.get("accumulate_grad_batches", self.accumulate))
        old_world = int(state_dict.get("world_size", self.world_size))
        if (old_world, old_accumulate) != (self.world_size, self.accumulate):
            log.warning("resuming with world_size×accumulate %d×%d instead of %d×%d: continuing at the next global"
                        " step, batch composition differs", self.world_size, self.accumulate, old_world, old_accumulate)
            micro = -(-micro // old_accumulate) * self.accumulate
        self._resume = (epoch, micro)
        self._next_epoch = epoch


def fingerprint_changes(saved: Mapping | None, current: Mapping) -> list[str]:
    """Human-readable differences between a checkpoint's data fingerprint and this run's (none when the checkpoint
    has no fingerprint)."""
    if not saved:
        return []
    out = []
    old_sets, new_sets = saved.get("datasets", {}), current.get("datasets", {})
    for name in sorted(set(old_sets) | set(new_sets)):
        if name not in new_sets:
            out.append(f"dataset '{name}' is gone")
            continue
        if name not in old_sets:
            out.append(f"dataset '{name}' is new")
            continue
        old_files = {f[0]: f for f in old_sets[name]["files"]}
        new_files = {f[0]: f for f in new_sets[name]["files"]}
        for path in sorted(set(old_files) | set(new_files)):
            if path not in new_files:
                out.append(f"{path}: removed")
            elif path not in old_files:
                out.append(f"{path}: added")
            elif list(old_files[path]) != list(new_files[path]):
                (_, size0, mtime0, lines0), (_, size1, mtime1, lines1) = old_files[path], new_files[path]
                what = [f"{size0} → {size1} bytes"] if size0 != size1 else []
                what += [f"{lines0} → {lines1} usable lines"] if lines0 != lines1 else []
                what += ["modified"] if mtime0 != mtime1 and not what else []
                out.append(f"{path}: {', '.join(what)}")
        for key in sorted(set(old_sets[name]["options"]) | set(new_sets[name]["options"])):
            a, b = old_sets[name]["options"].get(key), new_sets[name]["options"].get(key)
            if a != b:
                out.append(f"dataset '{name}' option {key}: {a!r} → {b!r}")
    for key in sorted(set(saved.get("batching", {})) | set(current.get("batching", {}))):
        a, b = saved.get("batching", {}).get(key), current.get("batching", {}).get(key)
        if a != b:
            out.append(f"data.{key}: {a!r} → {b!r}")
    return out
