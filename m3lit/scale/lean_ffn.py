"""Feed-forward blocks that store one activation instead of two: GELU is recomputed in the backward pass.

A BERT / RoBERTa / XLM-R layer computes ``out = W2 · gelu(a) + b2`` with ``a = W1 x + b1`` (I = intermediate size,
4 × hidden). Autograd stores both ``a`` (for GELU's backward) and ``gelu(a)`` (for W2's): 2 · I floats per token and
layer, the largest activations of the layer (about a quarter of all it stores). :class:`GeluLinear` replaces
``W2`` and takes ``a``: it stores ``a`` only and recomputes ``gelu(a)`` (elementwise) in the backward pass, which
saves I floats per token and layer at the cost of one GELU. Values and gradients are those of the two modules.

:func:`recompute_gelu` applies it to every layer of an encoder whose feed-forward block is
``intermediate.dense → intermediate.intermediate_act_fn (GELU) → output.dense``; the parameter names (and so the
state dict, checkpoints and exports) do not change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _GeluLinearFunction(torch.autograd.Function):
    """``linear(gelu(a), weight, bias)`` that saves ``a`` and ``weight`` only."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str):
        ctx.approximate = approximate
        ctx.has_bias = bias is not None
        ctx.save_for_backward(a, weight)
        return F.linear(F.gelu(a, approximate=approximate), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, weight = ctx.saved_tensors
        need_a, need_w, need_b = ctx.needs_input_grad[:3]
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_a = grad_w = grad_b = None
        if need_w:
            h = F.gelu(a, approximate=ctx.approximate).to(grad_out.dtype)  # recomputed, not stored
            grad_w = (flat_grad.t() @ h.reshape(-1, h.shape[-1])).to(weight.dtype)
        if need_b and ctx.has_bias:
            grad_b = flat_grad.sum(0).to(weight.dtype)
        if need_a:
            grad_h = (grad_out @ weight.to(grad_out.dtype)).to(a.dtype)
            grad_a = torch.ops.aten.gelu_backward(grad_h, a, approximate=ctx.approximate)
        return grad_a, grad_w, grad_b, None


class GeluLinear(nn.Linear):
    """``nn.Linear`` applied to ``gelu(input)``: (..., in_features) pre-activations → (..., out_features)."""

    approximate: str = "none"

    @classmethod
    def from_linear(cls, linear: nn.Linear, approximate: str) -> "GeluLinear":
        """The same parameters (shared, not copied) behind the fused forward."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.in_features, fused.out_features = linear.in_features, linear.out_features
        fused.weight = linear.weight
        fused.bias = linear.bias
        fused.approximate = approximate
        return fused

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return _GeluLinearFunction.apply(a, self.weight, self.bias, self.approximate)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gelu={self.approximate}"


def gelu_kind(activation: nn.Module) -> str | None:
    """``approximate`` of a GELU module (``none`` / ``tanh``), or None for anything else (left as it is)."""
    if isinstance(activation, nn.GELU):
        return activation.approximate
    if type(activation).__name__ == "GELUActivation" and getattr(activation, "act", None) is F.gelu:
        return "none"  # transformers' ACT2FN["gelu"]
    if type(activation).__name__ in ("PytorchGELUTanh", "GELUTanh"):
        return "tanh"  # transformers' ACT2FN["gelu_pytorch_tanh"]
    return None


def recompute_gelu(encoder: nn.Module) -> int:
    """Fuse each layer's GELU into its ``output.dense`` (:class:`GeluLinear`); returns the number of layers fused.

    Layers of another shape or activation are left unchanged (the function is then a no-op for them)."""
    fused = 0
    for module in encoder.modules():
        intermediate, output = getattr(module, "intermediate", None), getattr(module, "output", None)
        activation = getattr(intermediate, "intermediate_act_fn", None)
        dense = getattr(output, "dense", None)
        if activation is None or not isinstance(dense, nn.Linear) or isinstance(dense, GeluLinear):
            continue
        kind = gelu_kind(activation)
        if kind is None:
            continue
        intermediate.intermediate_act_fn = nn.Identity()
        output.dense = GeluLinear.from_linear(dense, kind)
        fused += 1
    return fused
