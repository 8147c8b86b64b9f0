"""Turn the lines of one micro-batch into the batch contract (see ``M3DataModule``).

Per line: one positive (uniform among ``pos``) and G-1 distinct negatives (uniform, without replacement, among
the line's distinct negatives that differ from its positives); when fewer exist, all of them in random order then
repeats (counted in ``meta["neg_repeats"]``). The choice is seeded by (seed, epoch, dataset, pass, row), so the
same line in the same epoch always gets the same group. Teacher scores follow the chosen texts.
Tokenization: right padding to the longest row rounded up to a multiple of ``pad_to_multiple_of``,
truncation at the dataset's query/passage max length.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .records import TrainRecord
from .sources import DatasetOptions

_TAG_CHOICE = 21


@dataclass
class PassageGroup:
    """The G passages (positive first) chosen for one query, with their teacher scores (or None)."""

    passages: list[str]
    scores: list[float] | None
    repeats: int
    removed: int  # negatives dropped as duplicates of another negative or of a positive


def choose_group(rec: TrainRecord, group_size: int, rng: np.random.Generator) -> PassageGroup:
    p = int(rng.integers(len(rec.pos)))
    passages = [rec.pos[p]]
    scores = [rec.pos_scores[p]] if rec.pos_scores is not None else None
    if group_size == 1:
        return PassageGroup(passages, scores, 0, 0)
    positives = set(rec.pos)
    first: dict[str, int] = {}
    for j, text in enumerate(rec.neg):
        if text not in positives and text not in first:
            first[text] = j
    distinct = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    removed = len(rec.neg) - distinct.size
    need = group_size - 1
    if distinct.size == 0:
        # every negative equals a positive: fall back to the raw list (counted as repeats)
        distinct = np.arange(len(rec.neg))
    if distinct.size >= need:
        picked = rng.choice(distinct, size=need, replace=False)
    else:
        rounds = -(-need // distinct.size)
        picked = np.concatenate([rng.permutation(distinct) for _ in range(rounds)])[:need]
    repeats = need - len(set(picked.tolist()))
    passages += [rec.neg[j] for j in picked]
    if scores is not None:
        scores += [rec.neg_scores[j] for j in picked]
    return PassageGroup(passages, scores, repeats, removed)


def query_text(rec: TrainRecord, opts: DatasetOptions) -> str:
    prompt = rec.prompt if rec.prompt is not None else opts.prompt
    return opts.prompt_format.format(prompt, rec.query) if prompt else rec.query


def tokenize(tokenizer, texts: list[str], max_length: int, pad_to_multiple_of: int) -> dict[str, torch.Tensor]:
    """Right-padded Long tensors [n, L]; L = longest (truncated) row rounded up to ``pad_to_multiple_of``."""
    ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    longest = max((len(x) for x in ids), default=1)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(ids), width), int(tokenizer.pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate_group_batch(records: list[TrainRecord], rngs: list[np.random.Generator], opts: DatasetOptions,
                        tokenizer, pad_to_multiple_of: int = 8) -> tuple[dict, dict]:
    """Batch contract tensors for ``records`` (one per query) and the numbers for ``meta``."""
    groups = [choose_group(rec, opts.group_size, rng) for rec, rng in zip(records, rngs)]
    queries = tokenize(tokenizer, [query_text(r, opts) for r in records], opts.query_max_len, pad_to_multiple_of)
    texts = [t for g in groups for t in g.passages]
    if opts.passage_prompt:
        texts = [opts.passage_prompt_format.format(opts.passage_prompt, t) for t in texts]
    passages = tokenize(tokenizer, texts, opts.passage_max_len, pad_to_multiple_of)
    teacher = None
    if groups and all(g.scores is not None for g in groups):
        teacher = torch.tensor([g.scores for g in groups], dtype=torch.float32)
    q_real, p_real = int(queries["attention_mask"].sum()), int(passages["attention_mask"].sum())
    q_all, p_all = queries["input_ids"].numel(), passages["input_ids"].numel()
    stats = {
        "group_size": opts.group_size,
        "batch_size": len(records),
        "query_len": int(queries["input_ids"].shape[1]),
        "passage_len": int(passages["input_ids"].shape[1]),
        "real_tokens": q_real + p_real,
        "padded_tokens": q_all + p_all,
        "pad_tokens": q_all + p_all - q_real - p_real,
        "padding_fraction": 1.0 - (q_real + p_real) / max(1, q_all + p_all),
        "query_padding_fraction": 1.0 - q_real / max(1, q_all),
        "passage_padding_fraction": 1.0 - p_real / max(1, p_all),
        "neg_repeats": sum(g.repeats for g in groups),
        "neg_duplicates_removed": sum(g.removed for g in groups),
    }
    batch = {"queries": queries, "passages": passages, "teacher_scores": teacher,
             "no_in_batch_neg": bool(opts.no_in_batch_neg)}
    return batch, stats


def line_rng(seed: int, epoch: int, dataset: int, pass_no: int, row: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TAG_CHOICE, int(epoch), int(dataset), int(pass_no), int(row)])
