"""Cross-device candidates: every rank's passages, gathered WITH gradient.

Each rank scores its own queries against the passages of all ranks. ``all_gather`` with gradient sends each
rank's loss gradient back to the rank that encoded the passage (its backward is a reduce-scatter sum), so after
DDP/FSDP average the gradients over ranks they equal those of one process holding the whole global batch.
Ranks may hold different row counts and padded lengths: tensors are padded to the largest, gathered, and the
padding rows dropped (the common padded length is kept, with zero weights / zero masks in the padding).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as all_gather_with_grad

from ..model.m3 import M3Reps

# id written into the padding of gathered ``input_ids``: never a real token id, and its weight is always 0
PAD_ID = -1


def world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather_sizes(sizes: list[int], device: torch.device, group) -> list[list[int]]:
    local = torch.tensor(sizes, dtype=torch.long, device=device)
    out = [torch.empty_like(local) for _ in range(world(group)[1])]
    dist.all_gather(out, local, group=group)
    return [t.tolist() for t in out]


def _pad_to(x: torch.Tensor, rows: int, length: int | None, value: float | int) -> torch.Tensor:
    """Pad dim 0 to ``rows`` and, when given, dim 1 to ``length`` (differentiable)."""
    pad = [0] * (2 * x.dim())  # F.pad order: last dim first, (left, right) each
    pad[2 * (x.dim() - 1) + 1] = rows - x.shape[0]
    if length is not None:
        pad[2 * (x.dim() - 2) + 1] = length - x.shape[1]
    return F.pad(x, pad, value=value) if any(pad) else x


def _gather(x: torch.Tensor, rows: list[int], length: int | None, value: float | int, group) -> torch.Tensor:
    """Concatenate ``x`` of every rank (rank order) along dim 0; float tensors keep their gradient."""
    padded = _pad_to(x, max(rows), length, value).contiguous()
    if padded.is_floating_point() and padded.requires_grad:
        with warnings.catch_warnings():
            # deprecated in favour of functional collectives whose backward needs reduce-scatter (absent on gloo);
            # this one falls back to all-to-all there
            warnings.filterwarnings("ignore", message=".*nn.functional.all_gather is deprecated",
                                    category=FutureWarning)
            parts = all_gather_with_grad(padded, group=group)
    else:
        parts = [torch.empty_like(padded) for _ in rows]
        dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, rows)])


@dataclass
class Candidates:
    """Passages of all ranks: ``reps`` (rank order), this rank's first row ``offset``, rows per rank."""

    reps: M3Reps
    offset: int
    rows: list[int]

    @property
    def total(self) -> int:
        return sum(self.rows)


def gather_candidates(p: M3Reps, heads: tuple[str, ...], group: dist.ProcessGroup | None = None) -> Candidates:
    """Gather the fields of ``p`` that ``heads`` score with: dense (N, d); sparse ids + weights (N, L);
    colbert vectors (N, L-1, d_c) + mask. Lengths are padded to the largest over ranks."""
    rank, size = world(group)
    n, length = p.input_ids.shape
    if size == 1:
        return Candidates(p, 0, [n])
    shapes = _all_gather_sizes([n, length], p.input_ids.device, group)
    rows = [s[0] for s in shapes]
    common = max(s[1] for s in shapes)
    out = M3Reps(input_ids=_gather(p.input_ids, rows, common, PAD_ID, group),
                 attention_mask=_gather(p.attention_mask, rows, common, 0, group))
    if "dense" in heads:
        out.dense = _gather(p.dense, rows, None, 0.0, group)
    if "sparse" in heads:
        out.sparse = _gather(p.sparse, rows, common, 0.0, group)
    if "colbert" in heads:
        out.colbert = _gather(p.colbert, rows, common - 1, 0.0, group)
        out.colbert_mask = _gather(p.colbert_mask, rows, common - 1, 0, group)
    return Candidates(out, sum(rows[:rank]), rows)
