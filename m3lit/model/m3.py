"""M3Model: one encoder, three heads (dense, sparse, multi-vector), saved in the BGE-M3 directory layout."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .defaults import HEADS
from .encoder import build_encoder
from .heads import ColbertHead, DenseHead, SparseHead

COLBERT_FILE = "colbert_linear.pt"
SPARSE_FILE = "sparse_linear.pt"
M3_CONFIG_FILE = "m3_config.json"


@dataclass
class M3Reps:
    """Representations of one batch of texts; a head that is off leaves its field ``None``.

    dense: (B, d); sparse: token weights (B, L) aligned with ``input_ids`` (B, L);
    colbert: (B, L-1, d_c) with ``colbert_mask`` (B, L-1).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    dense: torch.Tensor | None = None
    sparse: torch.Tensor | None = None
    colbert: torch.Tensor | None = None
    colbert_mask: torch.Tensor | None = None


@dataclass
class HeadConfig:
    """Which heads exist and how they pool; stored next to the weights as ``m3_config.json``."""

    heads: dict[str, bool] = field(default_factory=lambda: {h: True for h in HEADS})
    pooling: str = "cls"
    normalize: bool = True
    colbert_dim: int | None = None

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(h for h in HEADS if self.heads.get(h, False))


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids whose lexical weight is always zero: CLS/BOS, EOS/SEP, PAD, UNK (as in BGE-M3, whose SEP is its EOS;
    BERT-style tokenizers end every text with a SEP that would otherwise match every other text)."""
    ids = [tokenizer.cls_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id,
           tokenizer.pad_token_id, tokenizer.unk_token_id]
    return sorted({i for i in ids if i is not None})


class M3Model(nn.Module):
    """Encoder + heads. ``forward(input_ids, attention_mask) -> M3Reps``."""

    def __init__(self, encoder: PreTrainedModel, special_ids: list[int], head_config: HeadConfig | None = None):
        super().__init__()
        self.encoder = encoder
        self.head_config = head_config or HeadConfig()
        unknown = set(self.head_config.heads) - set(HEADS)
        if unknown:
            raise ValueError(f"model.heads: unknown head(s) {sorted(unknown)}; expected {HEADS}")
        if not self.head_config.active:
            raise ValueError("model.heads: at least one of dense, sparse, colbert must be on")
        hidden = encoder.config.hidden_size
        self.special_ids = list(special_ids)
        self.loaded_head_files: list[str] = []
        self.dense_head = DenseHead(self.head_config.pooling, self.head_config.normalize)
        # Both linear heads always exist so that a BGE-M3 checkpoint round-trips whatever heads are trained.
        self.sparse_head = SparseHead(hidden, special_ids)
        self.colbert_head = ColbertHead(hidden, self.head_config.colbert_dim, self.head_config.normalize)
        for name in HEADS:
            if name != "dense" and not self.head_config.heads.get(name, False):
                getattr(self, f"{name}_head").requires_grad_(False)

    @property
    def active_heads(self) -> tuple[str, ...]:
        return self.head_config.active

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                            **kwargs).last_hidden_state

    def heads_from_hidden(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          heads: tuple[str, ...] | None = None, positions: torch.Tensor | None = None) -> M3Reps:
        """The heads on the padded states (B, L, d), or with ``positions`` on the real tokens only: hidden (N, d),
        row r at flat padded position ``positions[r] = b·L + i`` of ``input_ids`` (B, L)."""
        heads = heads or self.active_heads
        reps = M3Reps(input_ids=input_ids, attention_mask=attention_mask)
        if "dense" in heads:
            reps.dense = self.dense_head(hidden, attention_mask, positions)
        if "sparse" in heads:
            reps.sparse = self.sparse_head(hidden, input_ids, attention_mask, positions)
        if "colbert" in heads:
            reps.colbert, reps.colbert_mask = self.colbert_head(hidden, attention_mask, positions)
        return reps

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                heads: tuple[str, ...] | None = None) -> M3Reps:
        hidden = self.hidden_states(input_ids, attention_mask)
        return self.heads_from_hidden(hidden, input_ids, attention_mask, heads)

    # ---------------------------------------------------------------- BGE-M3 directory layout
    def save_pretrained(self, directory: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write ``config.json`` + weights (encoder), ``colbert_linear.pt``, ``sparse_linear.pt``, ``m3_config.json``.

        ``state_dict`` (optional) is a full state dict of this module, e.g. consolidated from sharded training.
        """
        os.makedirs(directory, exist_ok=True)
        full = {k: v.detach().cpu().clone() for k, v in (state_dict or self.state_dict()).items()}

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v.contiguous() for k, v in full.items() if k.startswith(prefix)}

        self.encoder.save_pretrained(directory, state_dict=part("encoder."))
        torch.save(part("colbert_head.linear."), os.path.join(directory, COLBERT_FILE))
        torch.save(part("sparse_head.linear."), os.path.join(directory, SPARSE_FILE))
        cfg = self.head_config
        with open(os.path.join(directory, M3_CONFIG_FILE), "w") as f:
            json.dump({"heads": cfg.heads, "pooling": cfg.pooling, "normalize": cfg.normalize,
                       "colbert_dim": self.colbert_head.linear.out_features}, f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str, special_ids: list[int], attn_implementation: str = "sdpa",
                        head_config: HeadConfig | None = None) -> "M3Model":
        """Load a BGE-M3 directory; a plain HF encoder directory gets freshly initialised head linears."""
        encoder = build_encoder(path=directory, attn_implementation=attn_implementation)
        if head_config is None:
            head_config = load_head_config(directory)
        colbert_path = os.path.join(directory, COLBERT_FILE)
        if head_config.colbert_dim is None and os.path.isfile(colbert_path):
            head_config.colbert_dim = torch.load(colbert_path, map_location="cpu", weights_only=True)["weight"].shape[0]
        model = cls(encoder, special_ids, head_config)
        model.loaded_head_files = model.load_head_weights(directory)
        return model

    def load_head_weights(self, directory: str) -> list[str]:
        """Load ``colbert_linear.pt`` / ``sparse_linear.pt`` when present; returns the files loaded."""
        loaded = []
        for file, head in ((COLBERT_FILE, self.colbert_head), (SPARSE_FILE, self.sparse_head)):
            path = os.path.join(directory, file)
            if not os.path.isfile(path):
                continue
            state = torch.load(path, map_location="cpu", weights_only=True)
            expected = {k: tuple(v.shape) for k, v in head.linear.state_dict().items()}
            found = {k: tuple(v.shape) for k, v in state.items()}
            if expected != found:
                raise ValueError(f"{path}: weights of shape {found} do not fit this model's head {expected} "
                                 f"(hidden size {self.hidden_size}); is it a checkpoint of another model?")
            head.linear.load_state_dict(state)
            loaded.append(file)
        return loaded


def load_head_config(directory: str) -> HeadConfig:
    """The heads and pooling a directory was saved with (``m3_config.json``); a directory without it (a BGE-M3
    or plain Hugging Face one) has the dense head and the heads whose weight files it holds."""
    path = os.path.join(directory, M3_CONFIG_FILE)
    if not os.path.isfile(path):
        return HeadConfig(heads={"dense": True, "sparse": os.path.isfile(os.path.join(directory, SPARSE_FILE)),
                                 "colbert": os.path.isfile(os.path.join(directory, COLBERT_FILE))})
    with open(path) as f:
        raw = json.load(f)
    return HeadConfig(heads=dict(raw.get("heads", {h: True for h in HEADS})), pooling=raw.get("pooling", "cls"),
                      normalize=raw.get("normalize", True), colbert_dim=raw.get("colbert_dim"))
