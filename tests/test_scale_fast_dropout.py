"""Fast CPU dropout: the drop rate, independence of the 16-bit lanes, inverted scaling, gradients, seeding and
recomputation, and its place in the encoder and the packed attention."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from m3lit.scale.fast_dropout import FastDropout, drop_mask, fast_dropout, keep_mask, quantized_rate, use_fast_dropout
from m3lit.scale.varlen_attention import _attention, _attention_fast_dropout


def dropout_bert(attention_dropout: float = 0.1) -> nn.Module:
    """A 2-layer BERT (hidden 16) with hidden dropout 0.1."""
    from transformers import BertConfig, BertModel
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.1, attention_probs_dropout_prob=attention_dropout)
    return BertModel(config, add_pooling_layer=False)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_drop_rate_in_every_lane(p):
    """Each of the four int16 lanes of a 64-bit draw (the lowest has 15 random bits) drops at quantized_rate(p):
    within 5 standard errors on 400k elements per lane."""
    torch.manual_seed(0)
    mask = drop_mask((400_000, 4), p)
    rate = quantized_rate(p)
    assert abs(rate - p) <= 1 / 65536
    se = math.sqrt(rate * (1 - rate) / 400_000)
    for lane in range(4):
        assert abs(mask[:, lane].float().mean().item() - rate) < 5 * se, lane


def test_lanes_are_independent():
    """Neighbouring elements (lanes of one draw, and across draws) are uncorrelated: P(both dropped) = p²."""
    torch.manual_seed(1)
    m = drop_mask((1_000_000,), 0.5).float()
    for shift in (1, 2, 3, 4, 5):
        both = (m[:-shift] * m[shift:]).mean().item()
        assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / m.numel()), shift


def test_keep_mask_is_the_complement_of_the_drop_mask_from_the_same_draws():
    """keep_mask is drop_mask's complement as a one-byte 0/1 factor (what fast_dropout multiplies by)."""
    torch.manual_seed(4)
    dropped = drop_mask((37, 11), 0.3)
    torch.manual_seed(4)
    keep = keep_mask((37, 11), 0.3)
    assert keep.dtype == torch.uint8 and keep.shape == (37, 11)
    assert torch.equal(keep.bool(), ~dropped) and 0 < int(keep.sum()) < keep.numel()


def test_values_gradient_and_expectation():
    torch.manual_seed(2)
    x = torch.randn(64, 96, requires_grad=True)
    torch.manual_seed(3)
    y = fast_dropout(x, 0.1)
    torch.manual_seed(3)
    dropped = drop_mask(x.shape, 0.1)
    scale = 1 / (1 - quantized_rate(0.1))
    torch.testing.assert_close(y, torch.where(dropped, 0.0, x * scale), rtol=0, atol=0)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, torch.full_like(x, scale)), rtol=0, atol=0)
    # inverted dropout keeps the expectation: the mean over many draws approaches x
    ones = torch.ones(200_000)
    assert abs(fast_dropout(ones, 0.3).mean().item() - 1.0) < 0.01


def test_seeded_and_replayed_under_checkpoint():
    """Same seed, same mask; activation checkpointing recomputes the forward with the mask of the first pass (its
    preserved RNG state), so the gradient is that of one uncheckpointed pass."""
    x = torch.randn(32, 48, requires_grad=True)
    w = torch.randn(48, 48)

    def layer(t):
        return fast_dropout(t @ w, 0.2).tanh()

    torch.manual_seed(5)
    layer(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    torch.manual_seed(5)
    checkpoint(layer, x, use_reentrant=False).sum().backward()
    torch.testing.assert_close(x.grad, plain, rtol=0, atol=0)
    torch.manual_seed(6)
    assert not torch.equal(fast_dropout(x, 0.2), fast_dropout(x, 0.2))


def test_eval_mode_and_zero_rate_are_identity():
    x = torch.randn(5, 7)
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    module = FastDropout(0.1).eval()
    assert module(x) is x


def test_use_fast_dropout_replaces_every_dropout_keeping_rate_and_mode():
    model = dropout_bert(attention_dropout=0.2).train()
    stock = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_fast_dropout(model) == len(stock) == 1 + 2 * 3  # embeddings + (attention, 2 outputs) per layer
    fast = {name: m.p for name, m in model.named_modules() if isinstance(m, FastDropout)}
    assert fast == stock
    assert all(m.training for m in model.modules())
    assert model.state_dict().keys() == state.keys()
    assert use_fast_dropout(model) == 0  # already fast


def test_packed_attention_draws_its_mask_fast_and_matches_sdpa_without_dropout():
    """The written-out attention equals SDPA without dropout; with dropout its output and gradients are those of
    the explicit formula with drop_mask's mask (drawn again, identically, in the recomputed backward)."""
    torch.manual_seed(7)
    q, k, v = (torch.randn(3, 2, 10, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    mask[1, ..., 7:] = False
    with torch.no_grad():
        torch.testing.assert_close(_attention_fast_dropout(q, k, v, mask, 0.0),
                                   F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.manual_seed(8)
    out = _attention(q, k, v, mask, 0.25, None, True)
    out.backward(torch.ones_like(out))
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(8)
    probs = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask, float("-inf")), -1)
    dropped = drop_mask(probs.shape, 0.25)
    ref = torch.where(dropped, 0.0, probs / (1 - quantized_rate(0.25))) @ v
    torch.testing.assert_close(out, ref)
    ref.backward(torch.ones_like(ref))
    for got, want in zip(grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(got, want)


def test_training_module_applies_it_unless_turned_off():
    from m3lit.loss import M3Loss
    from m3lit.model import M3Model
    from m3lit.module import M3LightningModule

    def kinds(**encoding):
        module = M3LightningModule(M3Model(dropout_bert(), special_ids=[0, 1, 2]), M3Loss(), encoding=encoding)
        return sorted({type(m).__name__ for m in module.model.modules() if isinstance(m, nn.Dropout)})

    assert kinds() == ["FastDropout"]
    assert kinds(fast_dropout=False) == ["Dropout"]


def test_packed_attention_in_bf16_keeps_its_dtype_and_the_float32_result():
    """Under bf16 the two products run in bf16 (softmax in float32): the output is bf16 and within bf16 rounding
    of the float32 attention."""
    torch.manual_seed(9)
    q, k, v = (torch.randn(2, 3, 24, 16) for _ in range(3))
    mask = torch.ones(2, 1, 1, 24, dtype=torch.bool)
    mask[0, ..., 20:] = False
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = _attention_fast_dropout(*(t.bfloat16() for t in (q, k, v)), mask, 0.0)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=0)


def test_packed_attention_with_dropout_in_bf16_is_the_float32_formula_with_the_same_mask():
    """bf16 with dropout: the in-place scaled and masked bf16 scores, float32 softmax and the 1 / (1 − p_q) on the
    output give the float32 formula with drop_mask's mask, to bf16 rounding; gradients flow back in bf16."""
    torch.manual_seed(10)
    q, k, v = (torch.randn(2, 3, 24, 16) for _ in range(3))
    mask = torch.ones(2, 1, 1, 24, dtype=torch.bool)
    mask[1, ..., 17:] = False
    q16, k16, v16 = (t.bfloat16().requires_grad_() for t in (q, k, v))
    torch.manual_seed(11)
    got = _attention(q16, k16, v16, mask, 0.2, None, True)
    got.float().sum().backward()
    torch.manual_seed(11)
    dropped = drop_mask((2, 3, 24, 24), 0.2)
    probs = torch.softmax((q @ k.transpose(-1, -2) / 4).masked_fill(~mask, float("-inf")), -1)
    want = torch.where(dropped, 0.0, probs / (1 - quantized_rate(0.2))) @ v
    assert got.dtype == torch.bfloat16 and q16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=0)
    assert 0.1 < dropped.float().mean() < 0.3


def test_keep_mask_in_a_floating_dtype_holds_the_same_draws():
    """keep_mask(dtype=float32 / bfloat16): the uint8 mask's 0 / 1 from the same draws, written in that dtype."""
    torch.manual_seed(5)
    keep = keep_mask((23, 19), 0.2)
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(5)
        factor = keep_mask((23, 19), 0.2, dtype=dtype)
        assert factor.dtype == dtype and factor.shape == (23, 19)
        assert torch.equal(factor, keep.to(dtype))
