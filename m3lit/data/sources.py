"""Resolve the ``train`` config entry into dataset specs.

``train`` is a path, a glob, or a list of them; an entry may also be a mapping with ``path`` (path, glob or list)
and per-dataset options. A plain file/folder/glob entry gives ONE dataset PER FILE (named after the file); a mapping
entry gives ONE dataset made of all its files (named by ``name``, else the folder or file stem).
Options not set on an entry fall back to the data module's defaults.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from .errors import DataConfigError
from .tables import HUB_PREFIX, TABLE_SUFFIXES, is_table_source, table_stem

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
FOLDER_SUFFIXES = SUFFIXES + TABLE_SUFFIXES  # the files a folder entry takes


@dataclass(frozen=True)
class DatasetOptions:
    """Per-dataset options (any of them may be overridden per ``train`` entry).

    weight: multiplies the sampling probability (see ``M3DataModule``).
    group_size: G = 1 positive + (G-1) hard negatives per query.
    query_max_len / passage_max_len: truncation lengths in tokens (special tokens included).
    prompt: instruction prepended to every query (a line's own ``prompt`` field wins), as ``prompt_format``.
    passage_prompt: instruction prepended to every passage, as ``passage_prompt_format``.
    language: dataset language; default: the lines' ``language`` field, else the file name stem.
    no_in_batch_neg: score each query only against its own group.
    """

    weight: float = 1.0
    group_size: int = 8
    query_max_len: int = 512
    passage_max_len: int = 8192
    prompt: str | None = None
    prompt_format: str = "{}{}"
    passage_prompt: str | None = None
    passage_prompt_format: str = "{}{}"
    language: str | None = None
    no_in_batch_neg: bool = False

    def validate(self, name: str) -> None:
        if not self.weight >= 0:
            raise DataConfigError(f"dataset '{name}': weight must be >= 0, got {self.weight}")
        if int(self.group_size) < 1:
            raise DataConfigError(f"dataset '{name}': group_size must be >= 1, got {self.group_size}")
        if int(self.query_max_len) < 2 or int(self.passage_max_len) < 2:
            raise DataConfigError(f"dataset '{name}': max lengths must be >= 2")
        for key in ("prompt_format", "passage_prompt_format"):
            if getattr(self, key).count("{}") != 2:
                raise DataConfigError(f"dataset '{name}': {key} needs two '{{}}' (prompt, text)")


OPTION_NAMES = {f.name for f in fields(DatasetOptions)}


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its files (read in this order) and options."""

    name: str
    files: tuple[str, ...]
    options: DatasetOptions = field(default_factory=DatasetOptions)


def file_stem(path: str) -> str:
    if is_table_source(path):
        return table_stem(path)
    base = os.path.basename(path.rstrip("/"))
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def expand_path(pattern: str) -> list[str]:
    """Files named by a file path, a folder (its jsonl(.gz), parquet and arrow files, recursively), a glob, a
    saved ``datasets`` folder or a hub name (``hf://…``: each one source); sorted."""
    pattern = os.path.expanduser(str(pattern))
    if pattern.startswith(HUB_PREFIX) or (os.path.isdir(pattern) and is_table_source(pattern)):
        return [pattern]
    if os.path.isdir(pattern):
        found = [
            os.path.join(root, f)
            for root, _, names in os.walk(pattern)
            for f in names
            if f.endswith(FOLDER_SUFFIXES)
        ]
        if not found:
            raise DataConfigError(f"no .jsonl/.jsonl.gz/.parquet/.arrow file in folder '{pattern}'")
        return sorted(found)
    if os.path.isfile(pattern):
        return [pattern]
    matched = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matched:
        raise DataConfigError(f"training data path '{pattern}' matches no file")
    return matched


def _as_list(value) -> list:
    if isinstance(value, (str, os.PathLike)):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def resolve_datasets(train, defaults: DatasetOptions) -> list[DatasetSpec]:
    """Turn the ``train`` config value into a list of :class:`DatasetSpec` with unique names."""
    if train is None or (isinstance(train, (list, tuple)) and not train):
        raise DataConfigError("no training data given (data.train is empty)")
    specs: list[DatasetSpec] = []
    for entry in _as_list(train):
        if isinstance(entry, Mapping):
            entry = dict(entry)
            if "path" not in entry:
                raise DataConfigError(f"train entry {entry} has no 'path'")
            unknown = set(entry) - OPTION_NAMES - {"path", "name"}
            if unknown:
                raise DataConfigError(f"train entry '{entry['path']}': unknown option(s) {sorted(unknown)}")
            paths = _as_list(entry.pop("path"))
            files = [f for p in paths for f in expand_path(str(p))]
            first = str(paths[0])
            name = entry.pop("name", None) or (file_stem(first) if len(files) == 1 else os.path.basename(first.rstrip("/")))
            options = DatasetOptions(**{**defaults.__dict__, **entry})
            specs.append(DatasetSpec(str(name), tuple(files), options))
        else:
            path = str(entry)
            files = expand_path(path)
            root = path if os.path.isdir(path) and not is_table_source(path) else None
            for f in files:
                name = os.path.relpath(f, root) if root else f if f.startswith(HUB_PREFIX) else os.path.basename(f)
                specs.append(DatasetSpec(file_stem(name), (f,), defaults))
    seen: dict[str, DatasetSpec] = {}
    for spec in specs:
        if spec.name in seen:
            raise DataConfigError(
                f"two datasets are named '{spec.name}' ({seen[spec.name].files[0]} and {spec.files[0]}); "
                "give them distinct names with a {path:, name:} entry"
            )
        seen[spec.name] = spec
        spec.options.validate(spec.name)
    return specs


def sample_passages(train, count: int) -> list[str]:
    """Up to ``count`` passages (each line's ``pos`` then ``neg`` texts) from the first lines of every training file
    named by ``train`` (a ``data.train`` value), an equal share from each."""
    from .records import iter_file_records

    files = [f for spec in resolve_datasets(train, DatasetOptions()) for f in spec.files]
    share = max(1, count // len(files))
    texts: list[str] = []
    for path in files:
        taken: list[str] = []
        for _, _, record in iter_file_records(path):
            taken += [*record.pos, *record.neg]
            if len(taken) >= share:
                break
        texts += taken[:share]
    return texts
