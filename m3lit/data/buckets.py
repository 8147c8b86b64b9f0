"""Length buckets and the per-device batch size of each bucket.

Bucket k holds lines whose longest passage (the longest its group can contain: positives, and negatives when
G > 1; after truncation) has ``boundaries[k] <= tokens < boundaries[k+1]``; longer lines go to the last bucket.
Batch size per device: the ``batch_size`` table (one entry per bucket, or one int for all), or, when
``token_budget`` is set, ``max(1, token_budget // (G * L))`` with ``L`` the longest passage (after truncation,
rounded up to a multiple of 8) of the lines in the bucket, i.e. the budget bounds ``B * G * Lp`` passage tokens.
The default table is the M3 paper's fine-tuning batch sizes divided by its 24 GPUs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DataConfigError

PAPER_BOUNDARIES = (0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8192)
PAPER_BATCH_SIZES = (48, 32, 20, 18, 14, 14, 12, 10, 8)


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


@dataclass(frozen=True)
class BucketTable:
    boundaries: tuple[int, ...] = PAPER_BOUNDARIES
    batch_size: tuple[int, ...] = PAPER_BATCH_SIZES
    token_budget: int | None = None

    @classmethod
    def from_config(cls, boundaries: Sequence[int], batch_size: int | Sequence[int] | None, token_budget: int | None):
        bounds = tuple(int(b) for b in boundaries)
        if len(bounds) < 2 or bounds[0] != 0 or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise DataConfigError(f"bucket_boundaries must start at 0 and increase strictly, got {list(bounds)}")
        n = len(bounds) - 1
        if token_budget is not None:
            if int(token_budget) < 1:
                raise DataConfigError(f"token_budget must be positive, got {token_budget}")
            sizes = (0,) * n
        elif batch_size is None:
            raise DataConfigError("set batch_size (an int or one per bucket) or token_budget")
        elif isinstance(batch_size, (int, np.integer)):
            sizes = (int(batch_size),) * n
        else:
            sizes = tuple(int(b) for b in batch_size)
            if len(sizes) != n:
                raise DataConfigError(
                    f"batch_size has {len(sizes)} entries but bucket_boundaries {list(bounds)} define {n} buckets"
                )
        if token_budget is None and min(sizes) < 1:
            raise DataConfigError(f"batch sizes must be >= 1, got {list(sizes)}")
        return cls(bounds, sizes, None if token_budget is None else int(token_budget))

    def bucket_of(self, lengths: np.ndarray) -> np.ndarray:
        """int [n]: bucket index of each length."""
        return np.searchsorted(np.asarray(self.boundaries[1:-1]), lengths, side="right")

    def bounds(self, bucket: int) -> tuple[int, int]:
        return self.boundaries[bucket], self.boundaries[bucket + 1]

    def batch_size_for(self, bucket: int, group_size: int, longest: int, pad_multiple: int = 8) -> int:
        """Per-device number of queries for one bucket (``longest``: longest truncated passage in it)."""
        if self.token_budget is None:
            return self.batch_size[bucket]
        return max(1, self.token_budget // (group_size * round_up(max(longest, 1), pad_multiple)))
