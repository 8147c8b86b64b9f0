"""Training data kept as Hugging Face ``datasets``: ``save_to_disk`` folders, parquet and arrow files, hub names.

A table source is read once, row by row, into a jsonl copy in the data cache (as ``.gz`` files are decompressed),
which the byte-offset index then serves like any training file: same per-dataset options, same validation, exact
resume. Columns are the jsonl fields (``query``, ``pos``, ``neg``, ``pos_scores``, …); errors name the source and
the row (0-based, as ``dataset[i]``).

- ``*.parquet``: read in record batches with pyarrow (the library ``datasets`` stores tables with);
- ``*.arrow``: a ``datasets`` arrow file (``Dataset.from_file``, memory-mapped);
- a folder written by ``Dataset.save_to_disk`` (``state.json``), or by ``DatasetDict.save_to_disk``
  (``dataset_dict.json``: its ``train`` split, or its only split);
- ``hf://NAME[@CONFIG][:SPLIT]``: ``datasets.load_dataset(NAME, CONFIG, split=SPLIT or "train")`` (needs network or
  the local hub cache).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import IO, Any, Iterator

from .errors import DataError

TABLE_SUFFIXES = (".parquet", ".arrow")
HUB_PREFIX = "hf://"
ROWS_PER_BATCH = 1024


def is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in ("state.json",
                                                                                      "dataset_dict.json"))


def is_table_source(path: str) -> bool:
    path = str(path)
    return path.startswith(HUB_PREFIX) or path.endswith(TABLE_SUFFIXES) or is_saved_dataset(path)


def parse_hub_name(path: str) -> tuple[str, str | None, str]:
    """``hf://NAME[@CONFIG][:SPLIT]`` -> (NAME, CONFIG, SPLIT)."""
    rest = path[len(HUB_PREFIX):]
    rest, _, split = rest.partition(":")
    name, _, config = rest.partition("@")
    if not name:
        raise DataError(f"{path}: expected hf://NAME[@CONFIG][:SPLIT]")
    return name, config or None, split or "train"


def table_stem(path: str) -> str:
    """The dataset name a table source gets: file stem, folder name, or the hub name's last part."""
    path = str(path).rstrip("/")
    if path.startswith(HUB_PREFIX):
        name, config, split = parse_hub_name(path)
        return name.rsplit("/", 1)[-1] + (f"-{config}" if config else "") + ("" if split == "train" else f"-{split}")
    base = os.path.basename(path)
    for suffix in TABLE_SUFFIXES:
        if base.endswith(suffix):
            return base[:-len(suffix)]
    return base


def _files_of(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    return [path]


def source_stat(path: str) -> tuple[int, int]:
    """(total bytes, latest modification time in ns) of a source's files; (0, 0) for a hub name."""
    if str(path).startswith(HUB_PREFIX):
        return 0, 0
    stats = [os.stat(f) for f in _files_of(path)]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


def source_key(path: str, version: int) -> str:
    """Cache key: the path with every file's name, size and modification time (a hub dataset: its fingerprint)."""
    parts = [f"v{version}", os.path.abspath(path) if not path.startswith(HUB_PREFIX) else path]
    if path.startswith(HUB_PREFIX):
        parts.append(str(getattr(_load_hub(path), "_fingerprint", "")))
    else:
        for f in _files_of(path):
            st = os.stat(f)
            parts.append(f"{os.path.relpath(f, path) if f != path else ''}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def _load_hub(path: str) -> Any:
    import datasets

    name, config, split = parse_hub_name(path)
    return datasets.load_dataset(name, config, split=split)


def _saved_dataset(path: str) -> Any:
    import datasets

    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if "train" in loaded:
            return loaded["train"]
        if len(splits) == 1:
            return loaded[splits[0]]
        raise DataError(f"{path}: a DatasetDict with splits {splits} and no 'train'; give the split's folder "
                        f"(e.g. {os.path.join(path, splits[0])})")
    return loaded


def iter_rows(path: str) -> Iterator[dict]:
    """Every row of a table source as a dict, in order."""
    path = str(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH):
            yield from batch.to_pylist()
        return
    if path.startswith(HUB_PREFIX):
        table = _load_hub(path)
    elif path.endswith(".arrow"):
        import datasets

        table = datasets.Dataset.from_file(path)
    else:
        table = _saved_dataset(path)
    for batch in table.iter(batch_size=ROWS_PER_BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def _json_value(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    raise TypeError(f"a value of type {type(value).__name__} has no JSON form")


def row_json(row: dict) -> str:
    """A table row as one JSON line (numpy values as lists, dates as ISO strings)."""
    return json.dumps(row, ensure_ascii=False, default=_json_value)


def write_jsonl(path: str, out: IO[bytes]) -> int:
    """Write ``path``'s rows to ``out`` as jsonl lines (row i = line i + 1); returns the row count. A source that
    cannot be read raises a ``DataError`` naming it."""
    rows = 0
    try:
        for rows, row in enumerate(iter_rows(path), 1):
            try:
                line = row_json(row)
            except (TypeError, ValueError) as err:
                raise DataError(f"{path}: row {rows - 1}: {err}") from None
            out.write(line.encode("utf-8") + b"\n")
    except DataError:
        raise
    except (OSError, ValueError, KeyError) as err:  # pyarrow's ArrowInvalid is a ValueError; datasets: OSError
        raise DataError(f"{path}: cannot be read as a dataset ({type(err).__name__}: {err})") from None
    return rows
