"""Shared helpers for the scale tests and their multi-process scripts: a tiny M3 module and random batches."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # scripts run as files, from any directory
    sys.path.insert(0, str(ROOT))

from m3lit.inference.embedder import load_tokenizer
from m3lit.loss import (
    EmaTeacher,
    LayerwiseTeacher,
    LearnedTeacher,
    M3Loss,
    MixTeacher,
    SnapshotTeacher,
    ViewsTeacher,
    WeightedTeacher,
)
from m3lit.model import build_m3_model
from m3lit.module import M3LightningModule

TINY_M3 = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_m3")


def tiny_module(dropout: float = 0.0, seed: int = 0, learned_teacher: bool = True, heads=None, hidden: int = 16,
                layers: int = 2, attn: str = "sdpa", model_type: str = "xlm-roberta", use_data_scores: bool = True,
                ema: bool = False, views: dict | None = None, snapshot: bool = False, layerwise: dict | None = None,
                mix: dict | None = None, **train_step) -> M3LightningModule:
    """A 2-layer, hidden-16 M3 module (all heads, self-distillation, learned teacher weights by default when there
    are two heads or more; the teacher uses batches' teacher scores). ``ema``: teacher=ema (decay 0.5) whose copy is
    moved off the model by seeded noise, so that its targets differ from the model's own ensemble. ``mix``:
    teacher=mix with these keyword arguments (an ``ema`` source's copy is moved off the same way)."""
    tok = load_tokenizer(TINY_M3)
    torch.manual_seed(seed)
    cfg = dict(model_type=model_type, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
               intermediate_size=2 * hidden, max_position_embeddings=96, hidden_dropout_prob=dropout,
               attention_probs_dropout_prob=dropout, type_vocab_size=1)
    model = build_m3_model(tok, encoder_config=cfg, attn_implementation=attn,
                           heads=None if heads is None else {h: h in heads for h in ("dense", "sparse", "colbert")})
    learned = learned_teacher and (heads is None or len(heads) > 1)  # one head: nothing to weigh
    teacher = LearnedTeacher(use_data_scores=use_data_scores) if learned else WeightedTeacher(
        use_data_scores=use_data_scores)
    if ema:
        teacher = EmaTeacher(decay=0.5, use_data_scores=use_data_scores)
    if views is not None:  # teacher=views with these options
        teacher = ViewsTeacher(use_data_scores=use_data_scores, **views)
    if snapshot:  # teacher=snapshot, a first snapshot taken and moved off the model by seeded noise
        teacher = SnapshotTeacher(use_data_scores=use_data_scores)
    if layerwise is not None:  # teacher=layerwise with these options
        teacher = LayerwiseTeacher(use_data_scores=use_data_scores, **layerwise)
    if mix is not None:
        teacher = MixTeacher(**mix)
    loss = M3Loss(teacher=teacher, self_distill=True)
    module = M3LightningModule(model, loss, tok, **train_step)
    copies = ([module.ema.copy] if module.ema is not None else []) + ([module.snapshot.copy] if snapshot else [])
    if snapshot:
        module.snapshot.take(module.model)
    for copy in copies:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in copy.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return module


def ragged(rows: int, max_len: int, gen: torch.Generator, min_len: int = 3, vocab: int = 130) -> dict:
    """Right-padded XLM-R-style rows (<s>=0 … </s>=2, <pad>=1) of random lengths in [min_len, max_len]."""
    lengths = torch.randint(min_len, max_len + 1, (rows,), generator=gen)
    lengths[0] = max_len
    ids = torch.full((rows, max_len), 1, dtype=torch.long)
    mask = torch.zeros((rows, max_len), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(4, vocab, (n,), generator=gen)
        ids[i, 0], ids[i, n - 1] = 0, 2
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def random_batch(queries: int = 4, group: int = 2, q_len: int = 8, p_len: int = 16, seed: int = 0,
                 teacher_scores: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    batch = {"queries": ragged(queries, q_len, gen), "passages": ragged(queries * group, p_len, gen),
             "teacher_scores": torch.randn(queries, group, generator=gen) if teacher_scores else None,
             "no_in_batch_neg": False, "meta": {"dataset": "random", "bucket": 0}}
    return batch


def trim(features: dict) -> dict:
    """Drop all-padding columns (what a rank's collate does when padding its own slice)."""
    keep = int(features["attention_mask"].sum(1).max())
    return {k: v[:, :keep] for k, v in features.items()}


def rank_slice(batch: dict, rank: int, world: int) -> dict:
    """The rows of ``rank``'s disjoint slice of a global batch, padded to the slice's own longest row."""
    b = batch["queries"]["input_ids"].shape[0] // world
    g = batch["passages"]["input_ids"].shape[0] // batch["queries"]["input_ids"].shape[0]
    q = {k: v[rank * b:(rank + 1) * b] for k, v in batch["queries"].items()}
    p = {k: v[rank * b * g:(rank + 1) * b * g] for k, v in batch["passages"].items()}
    ts = batch["teacher_scores"]
    return {"queries": trim(q), "passages": trim(p),
            "teacher_scores": None if ts is None else ts[rank * b:(rank + 1) * b],
            "no_in_batch_neg": batch["no_in_batch_neg"], "meta": dict(batch["meta"])}


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def max_grad_diff(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[float, str]:
    """Worst difference over parameters: max |got - ref|, divided by the reference's largest entry when that
    exceeds 1 (float32 sums of many tokens, e.g. embedding gradients, carry ~1e-7 relative error)."""
    assert set(ref) == set(got), sorted(set(ref) ^ set(got))
    worst, name = 0.0, ""
    for k in ref:
        d = float((got[k] - ref[k]).abs().max()) / max(1.0, float(ref[k].abs().max()))
        if d > worst:
            worst, name = d, k
    return worst, name


def shorten(features: dict, rows: slice, length: int) -> None:
    """Cut the texts of ``rows`` to at most ``length`` tokens (in place, keeping </s> at the end)."""
    ids, mask = features["input_ids"][rows], features["attention_mask"][rows]
    long = mask.sum(1) > length
    mask[long, length:] = 0
    ids[long, length:] = 1
    ids[long, length - 1] = 2


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
