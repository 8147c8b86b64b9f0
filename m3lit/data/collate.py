"""Turn the lines of one micro-batch into the batch contract (see ``M3DataModule``).

Per line: one positive (uniform among ``pos``) and G-1 distinct negatives (uniform, without replacement, among
the line's distinct negatives that differ from its positives); when fewer exist, all of them in random order then
repeats (counted in ``meta["neg_repeats"]``). The choice is seeded by (seed, epoch, dataset, pass, row), so the
same line in the same epoch always gets the same group. Teacher scores follow the chosen texts.
When a line of the batch carries translations (``query_translation``, ``pos_translation``), the batch also has
``views``: the same rows with each query and chosen positive replaced by its translation where the line has one
(``teacher=views view=translation``).
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
    positive: int = 0  # index in ``pos`` of the chosen positive


def choose_group(rec: TrainRecord, group_size: int, rng: np.random.Generator) -> PassageGroup:
    p = int(rng.integers(len(rec.pos)))
    passages = [rec.pos[p]]
    scores = [rec.pos_scores[p]] if rec.pos_scores is not None else None
    if group_size == 1:
        return PassageGroup(passages, scores, 0, 0, p)
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
    return PassageGroup(passages, scores, repeats, removed, p)


def query_text(rec: TrainRecord, opts: DatasetOptions, translated: bool = False) -> str:
    query = rec.query_translation if translated and rec.query_translation is not None else rec.query
    prompt = rec.prompt if rec.prompt is not None else opts.prompt
    return opts.prompt_format.format(prompt, query) if prompt else query


def passage_texts(groups: list[list[str]], opts: DatasetOptions) -> list[str]:
    """The groups' passages in batch order, with the dataset's passage prompt."""
    texts = [t for group in groups for t in group]
    if opts.passage_prompt:
        texts = [opts.passage_prompt_format.format(opts.passage_prompt, t) for t in texts]
    return texts


def translated_view(records: list[TrainRecord], groups: list[PassageGroup], opts: DatasetOptions, tokenizer,
                    query_ids: list[list[int]], passage_ids: list[list[int]], pad_to_multiple_of: int,
                    ) -> tuple[dict | None, int, int]:
    """The batch's translated view ({"queries", "passages"} features, rows as in the batch) and the numbers of
    translated queries and positives; (None, 0, 0) when no line has a translation. Only the translated texts are
    tokenized; every other row reuses the batch's token ids (``query_ids``, ``passage_ids``)."""
    queries = [i for i, r in enumerate(records) if r.query_translation is not None]
    positives = [i for i, r in enumerate(records) if r.pos_translation is not None]
    if not queries and not positives:
        return None, 0, 0
    view_queries, view_passages = list(query_ids), list(passage_ids)
    translated = token_ids(tokenizer, [query_text(records[i], opts, translated=True) for i in queries],
                           opts.query_max_len)
    for i, ids in zip(queries, translated):
        view_queries[i] = ids
    texts = passage_texts([[records[i].pos_translation[groups[i].positive]] for i in positives], opts)
    for i, ids in zip(positives, token_ids(tokenizer, texts, opts.passage_max_len)):
        view_passages[i * opts.group_size] = ids  # each group's first passage is its positive
    pad = int(tokenizer.pad_token_id)
    view = {"queries": pad_ids(view_queries, pad, pad_to_multiple_of),
            "passages": pad_ids(view_passages, pad, pad_to_multiple_of)}
    return view, len(queries), len(positives)


def token_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated at ``max_length`` (special tokens included)."""
    if not texts:
        return []
    return tokenizer(texts, truncation=True, max_length=max_length, padding=False, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


def pad_ids(ids: list[list[int]], pad_token_id: int, pad_to_multiple_of: int) -> dict[str, torch.Tensor]:
    """Right-padded Long tensors [n, L]; L = longest row rounded up to ``pad_to_multiple_of``."""
    longest = max((len(x) for x in ids), default=1)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate_group_batch(records: list[TrainRecord], rngs: list[np.random.Generator], opts: DatasetOptions,
                        tokenizer, pad_to_multiple_of: int = 8) -> tuple[dict, dict]:
    """Batch contract tensors for ``records`` (one per query) and the numbers for ``meta``."""
    groups = [choose_group(rec, opts.group_size, rng) for rec, rng in zip(records, rngs)]
    query_ids = token_ids(tokenizer, [query_text(r, opts) for r in records], opts.query_max_len)
    passage_ids = token_ids(tokenizer, passage_texts([g.passages for g in groups], opts), opts.passage_max_len)
    pad = int(tokenizer.pad_token_id)
    queries, passages = pad_ids(query_ids, pad, pad_to_multiple_of), pad_ids(passage_ids, pad, pad_to_multiple_of)
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
    view, stats["translated_queries"], stats["translated_positives"] = translated_view(
        records, groups, opts, tokenizer, query_ids, passage_ids, pad_to_multiple_of)
    if view is not None:
        batch["views"] = view
    return batch, stats


def line_rng(seed: int, epoch: int, dataset: int, pass_no: int, row: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TAG_CHOICE, int(epoch), int(dataset), int(pass_no), int(row)])
