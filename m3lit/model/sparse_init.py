"""A fresh sparse head initialised from the training passages: token weights that start as an IDF weighting.

BM25's strength on short queries is inverse document frequency. A fresh ``Linear(d, 1)`` (or the ``uniform``
init: every token the same weight, plain overlap) starts far below it, and at a fine-tuning learning rate it has
one epoch to learn what IDF gives for free. ``sparse_init=idf`` fits the head once, before training, by ridge
regression of the encoder's token states onto ``sqrt(idf(t))`` (so that a shared token scores about
``w_q(t) w_p(t) ≈ idf(t)``), with the BM25 idf over the sampled passages
``idf(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))``, rescaled so that the mean token weight is ``mean_weight``.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from .m3 import M3Model
from .positions import position_limit

log = logging.getLogger(__name__)


def bm25_idf(token_lists: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """(vocab_size,) idf of each token id over the documents ``token_lists`` (each counted once per document)."""
    df = np.zeros(vocab_size, dtype=np.float64)
    for ids in token_lists:
        df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
    n = len(token_lists)
    return np.log1p((n - df + 0.5) / (df + 0.5))


@torch.no_grad()
def fit_sparse_head_to_idf(model: M3Model, tokenizer, texts: Sequence[str], max_length: int = 256,
                           mean_weight: float = 0.1, max_tokens: int = 200_000, ridge: float = 1e-2,
                           batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Set ``model.sparse_head.linear`` to the ridge fit of ``c·sqrt(idf)``; returns the fit's R² and sizes."""
    if not texts:
        raise ValueError("model.sparse_init=idf: no training passages to fit the sparse head on")
    limit = position_limit(model.encoder.config)
    max_length = min(max_length, limit) if limit else max_length
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    ids = sorted(ids, key=len)  # batches of similar lengths: little padding
    special = set(model.special_ids)
    idf = bm25_idf([[t for t in row if t not in special] for row in ids], model.encoder.config.vocab_size)
    was_training = model.training
    model.eval()
    features, targets = [], []
    gen = np.random.default_rng(seed)
    per_batch_cap = max(1, max_tokens * batch_size // max(len(ids), 1))
    device = next(model.parameters()).device
    for start in range(0, len(ids), batch_size):
        rows = ids[start:start + batch_size]
        width = max(map(len, rows))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        hidden = model.hidden_states(input_ids, mask).float()
        keep = mask.bool() & ~torch.isin(input_ids, torch.tensor(sorted(special), device=device))
        h, t = hidden[keep].cpu().numpy(), input_ids[keep].cpu().numpy()
        if len(t) > per_batch_cap:
            pick = gen.choice(len(t), per_batch_cap, replace=False)
            h, t = h[pick], t[pick]
        features.append(h)
        targets.append(np.sqrt(idf[t]))
    model.train(was_training)
    x = np.concatenate(features).astype(np.float64)
    y = np.concatenate(targets)
    y = y * (mean_weight / max(y.mean(), 1e-12))
    x1 = np.hstack([x, np.ones((len(x), 1))])
    gram = x1.T @ x1
    reg = ridge * np.trace(gram[:-1, :-1]) / max(x.shape[1], 1) * np.eye(len(gram))
    reg[-1, -1] = 0.0  # the bias is not shrunk
    coef = np.linalg.solve(gram + reg, x1.T @ y)
    pred = x1 @ coef
    r2 = 1.0 - float(((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))
    linear = model.sparse_head.linear
    linear.weight.copy_(torch.as_tensor(coef[:-1], dtype=linear.weight.dtype).view_as(linear.weight))
    linear.bias.fill_(float(coef[-1]))
    stats = {"passages": float(len(ids)), "tokens": float(len(y)), "r2": r2}
    log.info("model.sparse_init=idf: sparse head fitted to sqrt(idf) on %d tokens of %d passages (R² %.2f)",
             len(y), len(ids), r2)
    return stats
