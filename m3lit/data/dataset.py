"""A dataset = one or more indexed files + options; split into sampling units (one per language).

Language of a line: the dataset's configured ``language``, else the line's ``language`` field, else the file stem.
A dataset whose lines carry several languages yields one unit per language, so every batch is monolingual
(or one cross-lingual pair, e.g. ``xling_de-en``).
Line-level checks needing the options happen here: with ``group_size > 1`` a line needs at least one negative;
teacher scores must be present on all lines of a unit or on none.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .errors import BadLineError, EmptyDatasetError
from .index import FileIndex, build_file_index
from .lengths import passage_token_lengths
from .reader import LineReader
from .records import TrainRecord
from .sources import DatasetSpec, file_stem

log = logging.getLogger(__name__)


@dataclass
class BadLineReport:
    """Lines left out of one file, with the first few reasons."""

    dataset: str
    path: str
    count: int
    examples: list[str] = field(default_factory=list)


@dataclass
class Unit:
    """Sampling unit: the lines of one dataset in one language."""

    dataset: int
    language: str
    rows: np.ndarray  # int64 rows of the dataset view


class DatasetView:
    """The usable lines of one dataset, addressed by row ``0..n-1`` across its files."""

    def __init__(self, spec: DatasetSpec, files: list[FileIndex], keep: list[np.ndarray], lengths: list[np.ndarray],
                 languages: list[np.ndarray], language_names: list[str]):
        self.spec = spec
        self.files = files
        self.readers = [LineReader(f.path, f.text_path) for f in files]
        self.file_id = np.concatenate([np.full(k.size, i, np.int16) for i, k in enumerate(keep)])
        self.file_row = np.concatenate(keep).astype(np.int64)
        self.lengths = np.concatenate(lengths).astype(np.int32)  # longest passage a group can hold, tokens, capped
        self.language = np.concatenate(languages).astype(np.int16)
        self.language_names = language_names
        self.query_hash = np.concatenate([f.query_hash[k] for f, k in zip(files, keep)])

    def __len__(self) -> int:
        return int(self.file_row.shape[0])

    @property
    def name(self) -> str:
        return self.spec.name

    def record(self, row: int) -> TrainRecord:
        f = int(self.file_id[row])
        return self.readers[f].record(self.files[f], int(self.file_row[row]))

    def units(self, dataset_id: int) -> list[Unit]:
        return [
            Unit(dataset_id, self.language_names[lang], np.flatnonzero(self.language == lang))
            for lang in range(len(self.language_names))
            if np.any(self.language == lang)
        ]


def _line_languages(spec: DatasetSpec, index: FileIndex, names: dict[str, int]) -> np.ndarray:
    if spec.options.language is not None:
        return np.full(len(index), names.setdefault(spec.options.language, len(names)), np.int16)
    fallback = file_stem(index.path)
    table = np.array([names.setdefault(lang, len(names)) for lang in index.languages] + [0], np.int16)
    out = table[index.language]  # -1 -> last entry, replaced below
    missing = index.language < 0
    if missing.any():
        out[missing] = names.setdefault(fallback, len(names))
    return out


def load_dataset(spec: DatasetSpec, tokenizer, *, cache_dir: str, length_mode: str, fingerprint: str,
                 skip_bad_lines: bool, reports: list[BadLineReport]) -> DatasetView:
    """Index the files of ``spec`` and apply the option-dependent line checks."""
    opts = spec.options
    prompt_tokens = 0
    if opts.passage_prompt:
        prompt_tokens = len(tokenizer(opts.passage_prompt, add_special_tokens=False)["input_ids"])
    files, keep, lengths, langs = [], [], [], []
    names: dict[str, int] = {}
    for path in spec.files:
        index = build_file_index(path, cache_dir)
        bad = [(line, fld, msg) for line, fld, msg in index.bad_lines]
        n_bad = index.n_bad
        ok = np.ones(len(index), dtype=bool)
        if opts.group_size > 1:
            no_neg = index.n_neg == 0
            ok &= ~no_neg
            n_bad += int(no_neg.sum())
            bad += [(int(l), "neg", f"no negatives, but group_size={opts.group_size} needs {opts.group_size - 1}")
                    for l in index.line_no[no_neg][:10]]
        file_langs = _line_languages(spec, index, names)
        for lang in np.unique(file_langs[ok]):
            sel = ok & (file_langs == lang)
            scored = index.has_scores[sel]
            if scored.any() and not scored.all():
                minority = sel & (index.has_scores != (scored.sum() * 2 >= scored.size))
                ok &= ~minority
                n_bad += int(minority.sum())
                has = bool(scored.sum() * 2 >= scored.size)
                bad += [(int(l), "pos_scores", "missing while the other lines have teacher scores" if has else
                         "teacher scores while the other lines have none") for l in index.line_no[minority][:10]]
        if n_bad:
            bad.sort()
            if not skip_bad_lines:
                line, fld, msg = bad[0]
                raise BadLineError(path, line, fld, msg + f" ({n_bad} bad line(s) in this file; "
                                   "set data.skip_bad_lines=true to skip them)", index.unit)
            examples = [str(BadLineError(path, *b, unit=index.unit)) for b in bad[:5]]
            reports.append(BadLineReport(spec.name, path, n_bad, examples))
            log.warning("dataset '%s': skipped %d bad line(s) of %s, e.g. %s", spec.name, n_bad, path, examples[0])
        rows = np.flatnonzero(ok)
        pos_neg = passage_token_lengths(index, tokenizer, length_mode, cache_dir, fingerprint)
        # the bucket key: the longest passage this line's group can contain (negatives only when G > 1)
        length = pos_neg[:, 0] if opts.group_size == 1 else pos_neg.max(axis=1)
        files.append(index)
        keep.append(rows)
        lengths.append(np.minimum(length[rows] + prompt_tokens, opts.passage_max_len))
        langs.append(file_langs[rows])
    view = DatasetView(spec, files, keep, lengths, langs, sorted(names, key=names.get))
    if len(view) == 0:
        raise EmptyDatasetError(
            f"dataset '{spec.name}' ({', '.join(spec.files)}) has no usable line after skipping bad lines"
        )
    return view
