"""One projection for a self-attention layer's query, key and value: ``[q | k | v] = x · [W_q; W_k; W_v]ᵀ + b``.

A BERT / RoBERTa / XLM-R self-attention layer calls ``query(x)``, ``key(x)`` and ``value(x)`` on the same hidden
states x (tokens × d). Three products each read x; under autocast each casts x to the compute dtype (x stays fp32:
LayerNorm keeps its input's dtype) and autograd saves each cast; the backward pass runs three products for x's
gradient, casts each back and adds them. :func:`fuse_qkv` computes the three in one product of (tokens × d) by
(d × 3d) when the layer is entered, and ``query(x)`` / ``key(x)`` / ``value(x)`` return their slices of it: one
cast and one saved copy of x instead of three, one product for its gradient. The values are the three products'
(the same dot products, to the GEMM's rounding); parameter names, and so state dicts, checkpoints and exports, do not
change. A projection called on another tensor than the layer's input computes its own product, as before. The
(3d × d) concatenated weight is saved for the backward pass (3d² numbers per layer, in the compute dtype; the
unfused layers save their three weights' autocast casts, or nothing beyond the parameters in float32).

Applied to the self-attention layers of the encoders whose attention is known to project one input this way
(``FUSABLE_MODEL_TYPES``); other encoders are left unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NAMES = ("query", "key", "value")
FUSABLE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")


class QKVLinear(nn.Linear):
    """``nn.Linear`` that returns its slice of the layer's fused product when called on the layer's input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.__dict__.pop("_shared", None)  # (input, this projection's slice), set by the layer's hook
        if shared is not None and shared[0] is x:
            return shared[1]
        return super().forward(x)


def _project(attention: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: ``[q | k | v]`` of the hidden states (..., d) → (..., 3d), one slice per projection."""
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        return
    layers = [getattr(attention, name) for name in NAMES]
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
    for layer, part in zip(layers, F.linear(x, weight, bias).split(layers[0].out_features, dim=-1)):
        layer.__dict__["_shared"] = (x, part)


def _release(attention: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
    """Forward hook, also after an error: drop slices the layer did not use (a copied model must not hold them)."""
    for name in NAMES:
        getattr(attention, name).__dict__.pop("_shared", None)


def fuse_qkv(encoder: nn.Module) -> int:
    """Fuse the query / key / value products of every self-attention layer (three ``nn.Linear`` of one shape) of a
    BERT / RoBERTa / XLM-R encoder; returns the number of layers fused (0 for other encoders, or already fused)."""
    if getattr(getattr(encoder, "config", None), "model_type", None) not in FUSABLE_MODEL_TYPES:
        return 0
    fused = 0
    for module in list(encoder.modules()):
        layers = [getattr(module, name, None) for name in NAMES]
        if not type(module).__name__.endswith("SelfAttention") or not all(type(x) is nn.Linear for x in layers):
            continue
        if len({(layer.in_features, layer.out_features, layer.bias is None) for layer in layers}) != 1:
            continue
        for layer in layers:
            layer.__class__ = QKVLinear  # the same module, parameters and hooks
        module.register_forward_pre_hook(_project, with_kwargs=True)
        module.register_forward_hook(_release, with_kwargs=True, always_call=True)
        fused += 1
    return fused
