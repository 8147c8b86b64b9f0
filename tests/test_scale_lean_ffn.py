"""GELU recomputed in the backward pass (m3lit.scale.lean_ffn): the same values and gradients, one activation less."""
import copy

import pytest
import torch
from conftest import SMALL_ENCODER_SIZE, small_hf_encoder
from conftest import padded_batch as batch
from torch import nn
from transformers import AutoModel

from m3lit.scale.lean_ffn import GeluLinear, recompute_gelu

LAYERS, HIDDEN, INTERMEDIATE = SMALL_ENCODER_SIZE


def encoder(model_type: str = "xlm-roberta", hidden_act: str = "gelu", dropout: float = 0.0):
    return small_hf_encoder(model_type, dropout, hidden_act=hidden_act)


def forward_saving(model, ids, mask, seed: int = 0):
    """The last hidden state and the bytes of the distinct storages autograd saved for the backward pass."""
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return out, sum(storages.values())


@pytest.mark.parametrize("model_type,hidden_act", [("xlm-roberta", "gelu"), ("bert", "gelu"),
                                                   ("roberta", "gelu_pytorch_tanh")])
def test_values_gradients_and_saved_bytes(model_type, hidden_act):
    plain = encoder(model_type, hidden_act, dropout=0.1)
    lean = copy.deepcopy(plain)
    assert recompute_gelu(lean) == LAYERS
    assert recompute_gelu(lean) == 0  # already fused
    assert all(isinstance(layer.output.dense, GeluLinear) for layer in lean.encoder.layer)
    ids, mask = batch()
    out_plain, saved_plain = forward_saving(plain, ids, mask)
    out_lean, saved_lean = forward_saving(lean, ids, mask)  # same seed: the same dropout draws
    assert torch.equal(out_plain, out_lean)
    # one (rows × length × I) float32 activation less per layer
    assert saved_plain - saved_lean == LAYERS * ids.numel() * INTERMEDIATE * 4
    weights = torch.randn_like(out_plain)
    grads_plain = torch.autograd.grad((out_plain * weights).sum(), list(plain.parameters()))
    grads_lean = torch.autograd.grad((out_lean * weights).sum(), list(lean.parameters()))
    for (name, _), a, b in zip(plain.named_parameters(), grads_plain, grads_lean):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


def test_bf16_autocast_matches_unfused():
    plain = encoder()
    lean = copy.deepcopy(plain)
    recompute_gelu(lean)
    ids, mask = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_plain, _ = forward_saving(plain, ids, mask)
        out_lean, _ = forward_saving(lean, ids, mask)
    assert out_lean.dtype == out_plain.dtype
    assert torch.equal(out_plain, out_lean)
    grads_plain = torch.autograd.grad(out_plain.float().square().sum(), list(plain.parameters()))
    grads_lean = torch.autograd.grad(out_lean.float().square().sum(), list(lean.parameters()))
    for a, b in zip(grads_plain, grads_lean):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=2e-2, atol=1e-3)


def test_state_dict_and_saved_model_unchanged(tmp_path):
    plain = encoder()
    lean = copy.deepcopy(plain)
    recompute_gelu(lean)
    assert list(lean.state_dict()) == list(plain.state_dict())
    lean.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    assert not any(isinstance(m, GeluLinear) for m in reloaded.modules())
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   plain.eval()(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_other_activations_left_alone():
    model = encoder(hidden_act="relu")
    assert recompute_gelu(model) == 0
    assert all(type(layer.output.dense) is nn.Linear for layer in model.encoder.layer)


def test_training_module_applies_it_unless_turned_off():
    from m3lit.loss import M3Loss
    from m3lit.model import M3Model
    from m3lit.module import M3LightningModule

    def fused_layers(**encoding):
        model = M3Model(encoder(), special_ids=[0, 1, 2])
        module = M3LightningModule(model, M3Loss(), encoding=encoding)
        return sum(isinstance(m, GeluLinear) for m in module.model.modules())

    assert fused_layers() == LAYERS
    assert fused_layers(recompute_gelu=False) == 0
