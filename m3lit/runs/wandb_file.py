"""Read an offline W&B run (``wandb/offline-run-*/run-<id>.wandb``) without the W&B service or network.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then LevelDB-log chunks
in 32 KiB blocks. A chunk is a 7-byte header — CRC-32 (of the type byte, then the data; little endian), data
length (uint16), type (1 full, 2 first, 3 middle, 4 last) — and its data; a block tail shorter than a header is
zero padding. Each record is a ``wandb_internal_pb2.Record``: the run's config is the ``run`` record's config with
the ``config`` records' updates applied in order, its final metrics the ``summary`` records' updates likewise.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any, Iterator

from .record import RunRecord, numeric_metrics

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_record_bytes(path: str) -> Iterator[bytes]:
    """Yield the serialized records of a ``.wandb`` file; a truncated final record (a killed run) is dropped."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER.size:
        raise ValueError(f"{path}: not a W&B run file (shorter than its header)")
    ident, magic, version = HEADER.unpack_from(data)
    if ident != IDENT or magic != MAGIC or version != VERSION:
        raise ValueError(f"{path}: not a W&B run file (header {ident!r}, magic {magic:#x}, version {version})")
    pos, pending = HEADER.size, None
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        start, pos = pos + CHUNK.size, pos + CHUNK.size + length
        if pos > len(data):
            return  # the writer was killed mid-record
        chunk = data[start:pos]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt record at byte {start - CHUNK.size} (checksum mismatch)")
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += chunk
            if kind == LAST:
                yield pending
                pending = None
        else:
            raise ValueError(f"{path}: corrupt record at byte {start - CHUNK.size} (chunk type {kind})")


def _apply(target: dict[str, Any], items: Any, remove: Any = ()) -> None:
    """Apply W&B config/summary update items (``key`` or ``nested_key`` + ``value_json``) to ``target``."""
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            node[keys[-1]] = json.loads(item.value_json)
    for item in remove:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(keys[-1], None)


def _config_values(config: dict[str, Any]) -> dict[str, Any]:
    """W&B stores config entries as {"value": v, "desc": ...} in some writers; unwrap them, drop ``_wandb``."""
    out = {}
    for key, value in config.items():
        if key == "_wandb":
            continue
        if isinstance(value, dict) and set(value) <= {"value", "desc"} and "value" in value:
            value = value["value"]
        out[key] = value
    return out


def read_wandb_run(path: str) -> RunRecord:
    """An offline run's ``.wandb`` file (or its ``offline-run-*`` folder) as a RunRecord."""
    from wandb.proto import wandb_internal_pb2 as pb

    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".wandb"))
        if not files:
            raise FileNotFoundError(f"{path}: no run-<id>.wandb file in this W&B run folder")
        path = os.path.join(path, files[0])
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    run_id, name, group, status, job_type = os.path.basename(path)[4:-6], "", None, "unknown", None
    for raw in iter_record_bytes(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            run_id, name, group = run.run_id or run_id, run.display_name, run.run_group or None
            job_type = run.job_type or None
            _apply(config, run.config.update)
            _apply(summary, run.summary.update)
        elif kind == "config":
            _apply(config, record.config.update, record.config.remove)
        elif kind == "summary":
            _apply(summary, record.summary.update, record.summary.remove)
        elif kind == "exit":
            status = "finished" if record.exit.exit_code == 0 else "failed"
    # <output dir>/wandb/offline-run-*/run-<id>.wandb: the training run's output folder holds its other files
    folder = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    return RunRecord(run_id=run_id, name=name or run_id, source=path, config=_config_values(config),
                     metrics=numeric_metrics(summary), group=group, status=status, folder=folder, job_type=job_type)
