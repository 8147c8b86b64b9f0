"""Iterable of one rank's micro-batches for one epoch, and the DataLoader that feeds it to Lightning.

The stream is an ``IterableDataset`` (so Lightning never injects a DistributedSampler: each rank slices global
batches itself). Micro-batch ``i`` of epoch ``e`` on rank ``r`` = slice ``(i mod A)·W + r`` of global batch
``i div A``, collated. With ``num_workers = n > 0`` worker ``w`` makes micro-batches ``start + w, start + w + n, ...``;
the DataLoader's round-robin returns them in order, so the output does not depend on ``n``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .buckets import BucketTable
from .collate import collate_group_batch, line_rng
from .dataset import DatasetView, Unit
from .sampler import BatchPlan


class MicroBatchStream(IterableDataset):
    """Micro-batches of rank ``rank`` for the epoch set by :meth:`begin_epoch`."""

    def __init__(self, plan: BatchPlan, views: list[DatasetView], units: list[Unit], table: BucketTable, tokenizer,
                 *, rank: int, pad_to_multiple_of: int = 8):
        self.plan, self.views, self.units, self.table = plan, views, units, table
        self.tokenizer = tokenizer
        self.rank = int(rank)
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        self.epoch, self.start = 0, 0

    @property
    def world_size(self) -> int:
        return self.plan.world_size

    @property
    def accumulate(self) -> int:
        return self.plan.accumulate

    def begin_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return self.plan.steps_per_epoch(self.epoch) * self.accumulate

    def micro_batch(self, epoch: int, index: int) -> dict:
        """Collated micro-batch ``index`` (0-based, within ``epoch``) of this rank."""
        step, micro = divmod(index, self.accumulate)
        gb = self.plan.global_batch(epoch, step)
        rows = gb.micro_slice(micro, self.rank, self.world_size, self.accumulate)
        unit = self.units[gb.unit]
        view = self.views[unit.dataset]
        records = [view.record(int(r)) for r in rows]
        rngs = [line_rng(self.plan.seed, epoch, unit.dataset, gb.pass_no, int(r)) for r in rows]
        batch, stats = collate_group_batch(records, rngs, view.spec.options, self.tokenizer, self.pad_to_multiple_of)
        lo, hi = self.table.bounds(gb.bucket)
        batch["meta"] = {
            "dataset": view.name,
            "language": unit.language,
            "bucket": int(gb.bucket),
            "bucket_min_tokens": lo,
            "bucket_max_tokens": hi,
            **stats,
            "global_batch_size": int(len(gb.rows)),
            "epoch": int(epoch),
            "step": int(step),
            "micro_step": int(index),
            "rank": self.rank,
            "world_size": self.world_size,
            "accumulate": self.accumulate,
            "pass": int(gb.pass_no),
            "rows": [int(r) for r in rows],
        }
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        for index in range(self.start + worker, len(self), n_workers):
            yield self.micro_batch(epoch, index)


class EpochLoader(DataLoader):
    """DataLoader over a :class:`MicroBatchStream` that asks ``on_iter`` for the epoch before each iteration
    and counts the batches handed out (``consumed``)."""

    def __init__(self, stream: MicroBatchStream, on_iter: Callable[[], None], **kwargs):
        kwargs.pop("persistent_workers", None)
        super().__init__(stream, batch_size=None, shuffle=None, persistent_workers=False, **kwargs)
        self._on_iter = on_iter
        self.consumed = 0

    def __iter__(self):
        self._on_iter()
        self.consumed = self.dataset.start
        return self._counting(super().__iter__())

    def _counting(self, it):
        for batch in it:
            self.consumed += 1
            yield batch
