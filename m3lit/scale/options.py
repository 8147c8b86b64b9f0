"""The ``train_step`` knobs of M3LightningModule: cross-device candidates, encoding mode, non-finite losses.

    cross_device: {dense: bool, sparse: bool, colbert: bool}   # gather that head's candidates from all ranks
    encoding:
      mode: plain | split_batch | grad_cache
      sub_batch_size: int | null      # rows per sub-batch, whatever the length
      token_budget: int               # else rows = max(1, token_budget // padded_length)
      table: {max_length: rows} | null  # else the first entry whose max_length >= padded length (wins over both)
      packing: bool | "auto"          # unpadded encoding (packed sequences); auto: on unless a teacher needs
                                      # the padded per-layer states (teacher=layerwise)
      pack_length: int | null         # rows of this many tokens, block-diagonal mask (null: one row where possible)
      recompute_gelu: bool            # store the FFN's pre-activation only, GELU recomputed in backward (lean_ffn)
      fuse_qkv: bool                  # query, key and value in one product per layer (fused_qkv)
      fast_dropout: bool              # CPU dropout masks from 16-bit lanes of 64-bit draws (fast_dropout)
    nonfinite: stop | skip
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..model.m3 import HEADS

ENCODING_MODES = ("plain", "split_batch", "grad_cache")
NONFINITE_ACTIONS = ("stop", "skip")


def _unknown(section: str, given: Mapping[str, Any], known: tuple[str, ...]) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        raise ValueError(f"train_step.{section}: unknown key(s) {extra}; expected {list(known)}")


@dataclass
class EncodingOptions:
    mode: str = "plain"
    sub_batch_size: int | None = None
    token_budget: int = 32768
    table: dict[int, int] | None = None
    packing: bool | str = False
    pack_length: int | None = None
    recompute_gelu: bool = True
    fuse_qkv: bool = True
    fast_dropout: bool = True

    def __post_init__(self) -> None:
        if self.packing not in (True, False, "auto"):
            raise ValueError(f"train_step.encoding.packing={self.packing!r}: expected true, false or auto")
        if self.mode not in ENCODING_MODES:
            raise ValueError(f"train_step.encoding.mode={self.mode!r}: expected one of {ENCODING_MODES}")
        if self.sub_batch_size is not None and int(self.sub_batch_size) < 1:
            raise ValueError(f"train_step.encoding.sub_batch_size={self.sub_batch_size}: must be >= 1 or null")
        if int(self.token_budget) < 1:
            raise ValueError(f"train_step.encoding.token_budget={self.token_budget}: must be >= 1")
        if self.pack_length is not None and int(self.pack_length) < 1:
            raise ValueError(f"train_step.encoding.pack_length={self.pack_length}: must be >= 1 or null")
        if self.table is not None:
            table = {}
            for length, rows in dict(self.table).items():
                try:
                    length, rows = int(length), int(rows)
                except (TypeError, ValueError):
                    raise ValueError(f"train_step.encoding.table: entry {length!r}: {rows!r} is not "
                                     "max_length: rows (two integers)") from None
                if length < 1 or rows < 1:
                    raise ValueError(f"train_step.encoding.table: entry {length}: {rows} must be positive")
                table[length] = rows
            self.table = dict(sorted(table.items()))

    def sub_batch_rows(self, padded_length: int) -> int:
        """Rows per sub-batch for texts padded to ``padded_length``: table, else sub_batch_size, else token budget.

        Lengths above the table's largest ``max_length`` use its last (smallest-batch) entry."""
        if self.table:
            for max_length, rows in self.table.items():
                if padded_length <= max_length:
                    return rows
            return rows
        if self.sub_batch_size is not None:
            return int(self.sub_batch_size)
        return max(1, int(self.token_budget) // max(1, int(padded_length)))


@dataclass
class TrainStepOptions:
    cross_device: dict[str, bool] = field(default_factory=lambda: {h: True for h in HEADS})
    encoding: EncodingOptions = field(default_factory=EncodingOptions)
    nonfinite: str = "stop"

    def __post_init__(self) -> None:
        if self.nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f"train_step.nonfinite={self.nonfinite!r}: expected one of {NONFINITE_ACTIONS}")

    @classmethod
    def from_config(cls, cross_device: Mapping[str, bool] | bool | None = None,
                    encoding: Mapping[str, Any] | EncodingOptions | None = None,
                    nonfinite: str = "stop") -> "TrainStepOptions":
        if cross_device is None or isinstance(cross_device, bool):
            flags = {h: bool(True if cross_device is None else cross_device) for h in HEADS}
        else:
            _unknown("cross_device", cross_device, HEADS)
            flags = {h: bool(cross_device.get(h, True)) for h in HEADS}
        if not isinstance(encoding, EncodingOptions):
            encoding = dict(encoding or {})
            _unknown("encoding", encoding, tuple(EncodingOptions.__dataclass_fields__))
            encoding = EncodingOptions(**encoding)
        return cls(cross_device=flags, encoding=encoding, nonfinite=nonfinite)
