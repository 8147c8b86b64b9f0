"""Query, key and value in one product (m3lit.scale.fused_qkv): the same values and gradients, one cast of the input."""
import copy

import pytest
import torch
from conftest import SMALL_ENCODER_SIZE, small_hf_encoder
from conftest import padded_batch as batch
from torch import nn
from transformers import AutoModel

from m3lit.scale.fused_qkv import QKVLinear, fuse_qkv

LAYERS, HIDDEN, _ = SMALL_ENCODER_SIZE


def encoder(model_type: str = "xlm-roberta", attn_implementation: str = "sdpa", dropout: float = 0.0):
    return small_hf_encoder(model_type, dropout, attn_implementation)


def values_and_grads(model, ids, mask, seed: int = 0, autocast: bool = False):
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((out.float() * weights).sum(), list(model.parameters()))
    return out, dict(zip([n for n, _ in model.named_parameters()], grads))


def assert_close_in_norm(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str,
                         floor: float = 1e-6) -> None:
    """‖actual − expected‖ ≤ rel · ‖expected‖ + floor: the floor is rounding noise in gradients that are zero in exact
    arithmetic (the key bias's: softmax does not change when one constant is added to a query's logits)."""
    error, scale = (actual - expected).norm().item(), expected.norm().item()
    assert error <= rel * scale + floor, f"{name}: relative error {error / max(scale, 1e-30):.2e}"


def count_products(model, ids, mask, autocast: bool = False, forward=None) -> tuple[int, int]:
    """(matrix products, casts of float32 activations to bfloat16) in one forward pass (``forward(ids, mask)``,
    default: the encoder's)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"mm": 0, "cast": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("mm", "addmm", "bmm", "baddbmm", "linear"):
                counts["mm"] += 1
            if name == "_to_copy" and args[0].dtype == torch.float32 and args[0].dim() > 2 \
                    and (kwargs or {}).get("dtype") == torch.bfloat16:
                counts["cast"] += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), Count():
        (forward or (lambda i, m: model(input_ids=i, attention_mask=m)))(ids, mask)
    return counts["mm"], counts["cast"]


@pytest.mark.parametrize("model_type,attn_implementation", [("xlm-roberta", "sdpa"), ("bert", "sdpa"),
                                                            ("roberta", "eager")])
def test_values_and_gradients_equal_the_three_products(model_type, attn_implementation):
    plain = encoder(model_type, attn_implementation, dropout=0.1)
    fused = copy.deepcopy(plain)
    assert fuse_qkv(fused) == LAYERS
    assert fuse_qkv(fused) == 0  # already fused
    assert all(isinstance(getattr(layer.attention.self, name), QKVLinear)
               for layer in fused.encoder.layer for name in ("query", "key", "value"))
    ids, mask = batch()
    out_plain, grads_plain = values_and_grads(plain, ids, mask)
    out_fused, grads_fused = values_and_grads(fused, ids, mask)  # same seed: the same dropout draws
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-6, atol=1e-6)
    for name, grad in grads_plain.items():
        assert_close_in_norm(grads_fused[name], grad, 1e-5, name)  # x's gradient: one product, not three summed
    # one product per layer instead of three
    products_plain, _ = count_products(plain.eval(), ids, mask)
    products_fused, _ = count_products(fused.eval(), ids, mask)
    assert products_plain - products_fused == 2 * LAYERS


def test_layers_recomputed_in_the_backward_pass_give_the_same_gradients():
    """Activation checkpointing (split_batch, grad_cache's second pass) re-enters each layer: the hook runs again."""
    plain = encoder(dropout=0.1)
    fused = copy.deepcopy(plain)
    fuse_qkv(fused)
    fused.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    entered = []
    fused.encoder.layer[0].attention.self.register_forward_pre_hook(lambda *_: entered.append(1))
    ids, mask = batch()
    out_plain, grads_plain = values_and_grads(plain, ids, mask)
    out_fused, grads_fused = values_and_grads(fused, ids, mask)
    assert fused.training and len(entered) == 2  # the forward pass and its recomputation
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-6, atol=1e-6)
    for name, grad in grads_plain.items():
        assert_close_in_norm(grads_fused[name], grad, 1e-5, name)
    assert not any("_shared" in m.__dict__ for m in fused.modules())


def test_bf16_autocast_casts_the_input_once_per_layer():
    plain = encoder()
    fused = copy.deepcopy(plain)
    fuse_qkv(fused)
    ids, mask = batch()
    out_plain, grads_plain = values_and_grads(plain, ids, mask, autocast=True)
    out_fused, grads_fused = values_and_grads(fused, ids, mask, autocast=True)
    assert out_fused.dtype == out_plain.dtype
    torch.testing.assert_close(out_fused, out_plain, rtol=2e-2, atol=2e-2)
    for name, grad in grads_plain.items():
        assert grads_fused[name].dtype == torch.float32
        assert_close_in_norm(grads_fused[name], grad, 2e-2, name, floor=1e-3)
    _, casts_plain = count_products(plain.eval(), ids, mask, autocast=True)
    _, casts_fused = count_products(fused.eval(), ids, mask, autocast=True)
    assert casts_plain - casts_fused == 2 * LAYERS  # query, key, value cast x once instead of three times


def test_state_dict_copies_and_saved_model_unchanged(tmp_path):
    plain = encoder()
    fused = copy.deepcopy(plain)
    fuse_qkv(fused)
    assert list(fused.state_dict()) == list(plain.state_dict())
    ids, mask = batch()
    out, _ = values_and_grads(fused, ids, mask)
    assert not any("_shared" in m.__dict__ for m in fused.modules())  # the product is not kept after the pass
    copied = copy.deepcopy(fused)  # e.g. an EMA teacher or a weight average
    torch.testing.assert_close(values_and_grads(copied, ids, mask)[0], out)
    fused.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   fused.eval()(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_a_projection_called_on_another_tensor_computes_its_own():
    from m3lit.scale.fused_qkv import _project

    model = encoder()
    fuse_qkv(model)
    attention = model.encoder.layer[0].attention.self
    x, other = torch.randn(2, 7, HIDDEN), torch.randn(2, 7, HIDDEN)
    _project(attention, (x,), {})  # what the layer's pre-hook does on entry
    own = {name: nn.functional.linear(t, getattr(attention, name).weight, getattr(attention, name).bias)
           for name, t in (("query", x), ("key", other), ("value", x))}
    torch.testing.assert_close(attention.query(x), own["query"])
    torch.testing.assert_close(attention.key(other), own["key"])  # not x: its own product
    torch.testing.assert_close(attention.value(x), own["value"])


def test_an_error_inside_the_layer_leaves_no_product_behind():
    model = encoder()
    fuse_qkv(model)
    ids, mask = batch()
    with pytest.raises(RuntimeError, match="interrupted"):
        layer = model.encoder.layer[0].attention.self
        handle = layer.key.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("interrupted")))
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    assert not any("_shared" in m.__dict__ for m in model.modules())
    copy.deepcopy(model)  # an EMA teacher or a weight average copies the model after such a step


def test_only_self_attention_is_fused():
    model = small_hf_encoder("bert", is_decoder=True, add_cross_attention=True)
    assert fuse_qkv(model) == LAYERS  # the cross-attention layers' key and value read another input
    assert all(type(layer.crossattention.self.key) is nn.Linear for layer in model.encoder.layer)


def test_training_module_applies_it_unless_turned_off():
    from m3lit.loss import M3Loss
    from m3lit.model import M3Model
    from m3lit.module import M3LightningModule
    from m3lit.scale.packing import packed_hidden_states

    def packed_products(**encoding) -> tuple[int, int]:
        """(fused layers, matrix products of one packed forward pass: one row, attention text by text)."""
        model = M3Model(encoder(), special_ids=[0, 1, 2])
        module = M3LightningModule(model, M3Loss(), encoding=encoding)
        fused = sum(isinstance(m, QKVLinear) for m in module.model.modules()) // 3
        products, _ = count_products(None, *batch(), forward=lambda i, m: packed_hidden_states(module.model, i, m))
        return fused, products

    (fused, products_fused), (plain, products_plain) = packed_products(), packed_products(fuse_qkv=False)
    assert (fused, plain) == (LAYERS, 0)
    assert products_plain - products_fused == 2 * LAYERS
