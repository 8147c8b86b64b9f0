"""M3Embedder: inference with the semantics of FlagEmbedding's ``BGEM3FlagModel`` (encode, compute_score)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..model import M3Model, M3Reps, special_token_ids
from ..model.defaults import HEADS
from ..model.scores import colbert_scores, dense_scores, sparse_scores
from ..scale.packing import encode_rows, packed_hidden_states
from .export import export_bge_m3
from .model_folder import check_model_folder, check_tokenizer_folder


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (the model hub is never used)."""
    check_tokenizer_folder(path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{path}: cannot load a tokenizer from this directory ({err})") from err


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)


def lexical_matching_score(a: Mapping, b: Mapping) -> float:
    """Σ_{t ∈ a ∩ b} a[t] b[t] for two {token_id: weight} dicts."""
    if len(a) > len(b):
        a, b = b, a
    return float(sum(w * b[t] for t, w in a.items() if t in b))


def colbert_score(q: np.ndarray, p: np.ndarray) -> float:
    """(Σ_i max_j q_i · p_j) / len(q) for token vectors q (Lq, d), p (Lp, d)."""
    return float((q @ p.T).max(axis=1).sum() / q.shape[0])


class M3Embedder:
    """Encoder + tokenizer for inference. Shares weights with a training module when built from its model.

    ``packing`` (default on): each batch is encoded unpadded, as in training (``m3lit.scale.packing``: one row,
    attention text by text), with the padded path's outputs."""

    def __init__(self, model: M3Model, tokenizer: PreTrainedTokenizerBase, device: str | torch.device | None = None,
                 packing: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.packing = packing
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if device is not None:
            self.model.to(self.device)

    @classmethod
    def from_pretrained(cls, path: str, device: str | None = None, attn_implementation: str = "sdpa",
                        fresh_heads: bool = False) -> "M3Embedder":
        """Load a BGE-M3-layout directory (HF config + weights + colbert_linear.pt + sparse_linear.pt + tokenizer).

        A folder missing any of these is refused, naming what is missing; with ``fresh_heads`` a missing head file
        gives a freshly initialised head, left out of :attr:`trained_heads`."""
        check_model_folder(path, fresh_heads=fresh_heads)
        tokenizer = load_tokenizer(path)
        model = M3Model.from_pretrained(path, special_token_ids(tokenizer), attn_implementation=attn_implementation)
        vocab = getattr(model.encoder.config, "vocab_size", None)
        if vocab is not None and len(tokenizer) > vocab:
            raise ValueError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the encoder's vocabulary "
                             f"{vocab}: they come from different models")
        return cls(model, tokenizer, device or "cpu")

    def save_pretrained(self, directory: str) -> str:
        return export_bge_m3(self.model, self.tokenizer, directory)

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: Sequence[str], max_length: int, mcls_interval: int | None = None) -> list[list[int]]:
        """Token ids with CLS/EOS, truncated to ``max_length``; with ``mcls_interval`` a CLS every that many
        positions (MCLS, for long documents)."""
        if not mcls_interval:
            return self.tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]
        from .mcls import insert_mcls

        content = self.tokenizer(list(texts), add_special_tokens=False, padding=False)["input_ids"]
        return [insert_mcls(ids, self.tokenizer.cls_token_id, self.tokenizer.eos_token_id, max_length, mcls_interval)
                for ids in content]

    def _pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device)}

    def encode_batches(self, texts: Sequence[str], batch_size: int, max_length: int, heads: tuple[str, ...],
                       mcls_interval: int | None = None) -> Iterator[tuple[list[int], M3Reps]]:
        """Yield (original indices, reps) for length-sorted batches (longest first, less padding).

        With ``mcls_interval`` the dense vector is the normalised mean of the CLS tokens' hidden states and the
        multi-vector rows of the inserted CLS tokens get mask 0."""
        ids = self.tokenize(texts, max_length, mcls_interval)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        packing = self.packing and self.tokenizer.padding_side == "right"  # packing reads right-padded rows
        with eval_mode(self.model):
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                inputs = self._pad([ids[i] for i in chunk])
                input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
                if not mcls_interval:
                    yield chunk, encode_rows(self.model, input_ids, mask, packing=packing, heads=heads)
                    continue
                from .mcls import mcls_pool, mcls_token_mask

                hidden = (packed_hidden_states(self.model, input_ids, mask) if packing
                          else self.model.hidden_states(input_ids, mask))
                reps = self.model.heads_from_hidden(hidden, input_ids, mask, heads)
                cls_id = self.tokenizer.cls_token_id
                if reps.dense is not None:
                    reps.dense = torch.nn.functional.normalize(mcls_pool(hidden, input_ids, mask, cls_id), dim=-1)
                if reps.colbert is not None:
                    reps.colbert_mask = mcls_token_mask(input_ids, mask, cls_id)[:, 1:].long()
                yield chunk, reps

    @property
    def trained_heads(self) -> tuple[str, ...]:
        """The heads this model was trained with (``m3_config.json``; for a directory without it, the heads whose
        weight files it holds, dense always)."""
        return self.model.active_heads

    def check_heads(self, heads: Sequence[str]) -> None:
        """Refuse heads the model never trained: their outputs would be an untrained projection."""
        untrained = [h for h in heads if h not in self.trained_heads]
        if untrained:
            raise ValueError(f"this model's {', '.join(untrained)} head(s) were never trained (trained heads: "
                             f"{', '.join(self.trained_heads)}); ask only for those")

    def encode(self, texts: str | Sequence[str], batch_size: int = 32, max_length: int = 512,
               return_dense: bool | None = None, return_sparse: bool | None = None,
               return_colbert: bool | None = None, mcls: bool = False, mcls_interval: int = 256) -> dict[str, object]:
        """Encode ``texts``. Returns ``dense`` float32 [n, d], ``sparse`` list of {token_id: weight},
        ``colbert`` list of float32 [tokens - 1, d_c] (CLS excluded), each present when asked for.

        ``mcls``: for long documents, a CLS every ``mcls_interval`` tokens and the dense vector the mean of their
        hidden states (the M3 paper's MCLS); multi-vector output then leaves the inserted CLS tokens out."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        asked = {"dense": return_dense, "sparse": return_sparse, "colbert": return_colbert}
        heads = tuple(h for h in HEADS if asked[h] or (asked[h] is None and h in self.trained_heads))
        if not heads:
            raise ValueError("encode: ask for at least one of return_dense, return_sparse, return_colbert")
        self.check_heads([h for h in HEADS if asked[h]])
        return_dense, return_sparse, return_colbert = ("dense" in heads), ("sparse" in heads), ("colbert" in heads)
        dense = [None] * len(texts)
        sparse: list[dict[int, float] | None] = [None] * len(texts)
        colbert: list[np.ndarray | None] = [None] * len(texts)
        for chunk, reps in self.encode_batches(texts, batch_size, max_length, heads, mcls_interval if mcls else None):
            lengths = reps.attention_mask.sum(-1).tolist()
            if reps.dense is not None:
                for i, vec in zip(chunk, reps.dense.float().cpu().numpy()):
                    dense[i] = vec
            if reps.sparse is not None:
                weights = reps.sparse.float().cpu().numpy()
                token_ids = reps.input_ids.cpu().numpy()
                for row, i in enumerate(chunk):
                    sparse[i] = _lexical_dict(token_ids[row, :lengths[row]], weights[row, :lengths[row]])
            if reps.colbert is not None:
                vecs = reps.colbert.float().cpu().numpy()
                keep = reps.colbert_mask.bool().cpu().numpy()
                for row, i in enumerate(chunk):
                    colbert[i] = vecs[row][keep[row]].copy()
        out: dict[str, object] = {}
        if return_dense:
            out["dense"] = np.stack(dense).astype(np.float32) if texts else np.zeros((0, self.model.hidden_size),
                                                                                     np.float32)
        if return_sparse:
            out["sparse"] = sparse
        if return_colbert:
            out["colbert"] = colbert
        if single:
            out = {k: v[0] for k, v in out.items()}
        return out

    # ------------------------------------------------------------------ scoring
    def compute_score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, max_query_length: int = 512,
                      max_passage_length: int = 512, weights_for_different_modes: Sequence[float] | None = None,
                      ) -> dict[str, list[float]]:
        """Scores of (query, passage) pairs per mode and the weighted hybrids (FlagEmbedding's ``compute_score``);
        every head must have been trained."""
        self.check_heads(HEADS)
        w = list(weights_for_different_modes or (1.0, 1.0, 1.0))
        if len(w) != 3:
            raise ValueError("weights_for_different_modes: give 3 weights (dense, sparse, colbert)")
        result: dict[str, list[float]] = {k: [] for k in ("colbert", "sparse", "dense", "sparse+dense",
                                                          "colbert+sparse+dense")}
        with eval_mode(self.model):
            for start in range(0, len(pairs), batch_size):
                batch = pairs[start:start + batch_size]
                q = self._reps([p[0] for p in batch], max_query_length)
                p = self._reps([p[1] for p in batch], max_passage_length)
                d = dense_scores(q.dense, p.dense).diagonal()
                s = sparse_scores(q.input_ids, q.sparse, p.input_ids, p.sparse).diagonal()
                c = colbert_scores(q.colbert, q.colbert_mask, p.colbert, p.colbert_mask).diagonal()
                result["dense"] += d.tolist()
                result["sparse"] += s.tolist()
                result["colbert"] += c.tolist()
                result["sparse+dense"] += ((w[0] * d + w[1] * s) / (w[0] + w[1])).tolist()
                result["colbert+sparse+dense"] += ((w[0] * d + w[1] * s + w[2] * c) / sum(w)).tolist()
        return result

    def _reps(self, texts: list[str], max_length: int) -> M3Reps:
        inputs = self._pad(self.tokenize(texts, max_length))
        return self.model(inputs["input_ids"], inputs["attention_mask"], heads=HEADS)

    @staticmethod
    def lexical_matching_score(a: Mapping, b: Mapping) -> float:
        return lexical_matching_score(a, b)

    @staticmethod
    def colbert_score(q: np.ndarray, p: np.ndarray) -> float:
        return colbert_score(q, p)


def _lexical_dict(token_ids: np.ndarray, weights: np.ndarray) -> dict[int, float]:
    """{token_id: max weight} without zero weights (special ids already have weight 0)."""
    out: dict[int, float] = {}
    for t, w in zip(token_ids.tolist(), weights.tolist()):
        if w > 0 and w > out.get(t, 0.0):
            out[t] = w
    return out
