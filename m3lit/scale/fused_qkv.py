"""One projection for a self-attention layer's query, key and value: ``[q | k | v] = x · [W_q; W_k; W_v]ᵀ + b``.

A BERT / RoBERTa / XLM-R self-attention layer calls ``query(x)``, ``key(x)`` and ``value(x)`` on the same hidden
states x (tokens × d). Three products each read x; under autocast each casts x to the compute dtype (x stays fp32:
LayerNorm keeps its input's dtype) and autograd saves each cast; the backward pass runs three products for x's
gradient, casts each back and adds them. :func:`fuse_qkv` computes the three in one product of (tokens × d) by
(d × 3d) when the layer is entered, and ``query(x)`` / ``key(x)`` / ``value(x)`` return their slices of it: one
cast and one saved copy of x instead of three, one product for its gradient. The values are the three products'
(the same dot products, to the GEMM's rounding); parameter names, and so state dicts, checkpoints and exports, do not
change. A projection called on another tensor than the layer's input computes its own product, as before.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NAMES = ("query", "key", "value")


class QKVLinear(nn.Linear):
    """``nn.Linear`` that returns its slice of the layer's fused product when called on the layer's input."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "QKVLinear":
        """The same parameters (shared, not copied)."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.in_features, fused.out_features = linear.in_features, linear.out_features
        fused.weight = linear.weight
        fused.bias = linear.bias
        return fused

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
    """Forward hook: drop slices the layer did not use (a copied model must not hold the product)."""
    for name in NAMES:
        getattr(attention, name).__dict__.pop("_shared", None)


def fuse_qkv(encoder: nn.Module) -> int:
    """Fuse the query / key / value products of every layer whose three are ``nn.Linear`` of one shape; returns the
    number of layers fused (0 for encoders of another layout, or already fused)."""
    fused = 0
    for module in encoder.modules():
        layers = [getattr(module, name, None) for name in NAMES]
        if not all(type(layer) is nn.Linear for layer in layers):
            continue
        if len({(layer.in_features, layer.out_features, layer.bias is None) for layer in layers}) != 1:
            continue
        for name, layer in zip(NAMES, layers):
            setattr(module, name, QKVLinear.from_linear(layer))
        module.register_forward_pre_hook(_project, with_kwargs=True)
        module.register_forward_hook(_release, with_kwargs=True)
        fused += 1
    return fused
