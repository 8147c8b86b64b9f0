"""Packed (unpadded) encoding gives the padded path's outputs and gradients."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import grads, max_grad_diff, ragged, random_batch, tiny_module  # noqa: E402

from m3lit.scale.packing import encode_rows, first_fit_decreasing, pack, packed_hidden_states  # noqa: E402

TOL = 1e-5


def test_pack_layout():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1], [0, 8, 9, 10, 11, 2]])
    mask = (ids != 1).long()
    packed = pack(ids, mask, capacity=6, position_offset=2, pad_id=1)
    # longest first: text 2 (6 tokens) fills row 0; texts 0 (4) and 1 (3) do not fit together in 6 -> 3 rows
    assert packed.input_ids.tolist() == [[0, 8, 9, 10, 11, 2], [0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]]
    assert packed.position_ids[0].tolist() == [2, 3, 4, 5, 6, 7]
    wide = pack(ids, mask, capacity=8, position_offset=2, pad_id=1)
    assert wide.input_ids.tolist() == [[0, 8, 9, 10, 11, 2, 1, 1], [0, 5, 6, 2, 0, 7, 2, 1]]
    assert wide.position_ids[1].tolist() == [2, 3, 4, 5, 2, 3, 4, 2]  # positions restart at every text
    assert wide.segments[1].tolist() == [0, 0, 0, 0, 1, 1, 1, -2]
    single = pack(ids, mask, capacity=None)
    assert single.input_ids.shape == (1, 13) and single.cu_seqlens.tolist() == [0, 4, 7, 13]
    assert single.max_length == 6
    assert first_fit_decreasing([5, 1, 4, 2, 3], 6) == [[0, 1], [2, 3], [4]]


def test_left_padding_is_rejected():
    ids = torch.tensor([[1, 0, 5, 2]])
    with pytest.raises(ValueError, match="right-padded"):
        pack(ids, (ids != 1).long(), capacity=4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pack_length", [None, 40])
def test_packed_outputs_equal_padded(attn, pack_length):
    module = tiny_module(attn=attn).eval()
    features = ragged(7, 24, torch.Generator().manual_seed(3))
    ids, mask = features["input_ids"], features["attention_mask"]
    with torch.no_grad():
        padded = module.model(ids, mask)
        packed = encode_rows(module.model, ids, mask, packing=True, pack_length=pack_length)
        hidden_padded = module.model.hidden_states(ids, mask)
        hidden_packed = packed_hidden_states(module.model, ids, mask, pack_length)
    real = mask.bool()
    torch.testing.assert_close(hidden_packed[real], hidden_padded[real], atol=TOL, rtol=0)
    assert hidden_packed[~real].abs().max() == 0
    for field in ("dense", "sparse", "colbert"):
        torch.testing.assert_close(getattr(packed, field), getattr(padded, field), atol=TOL, rtol=0)


def test_packed_outputs_equal_padded_bert_positions():
    """Encoders whose positions start at 0 (BERT) are packed with positions 0, 1, …"""
    module = tiny_module(model_type="bert").eval()
    features = ragged(5, 16, torch.Generator().manual_seed(4))
    with torch.no_grad():
        padded = module.model(features["input_ids"], features["attention_mask"])
        packed = encode_rows(module.model, features["input_ids"], features["attention_mask"], packing=True)
    torch.testing.assert_close(packed.colbert, padded.colbert, atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", ["plain", "grad_cache"])
def test_packed_training_step_equals_padded(mode):
    batch = random_batch(queries=4, group=3, q_len=8, p_len=24, seed=5)

    def step(module):
        torch.manual_seed(0)
        out = module.forward_loss(batch)
        out.loss.backward()
        return float(out.loss), grads(module)

    ref_loss, ref = step(tiny_module())
    loss, got = step(tiny_module(encoding={"mode": mode, "packing": True, "sub_batch_size": 5}))
    assert loss == pytest.approx(ref_loss, abs=TOL)
    worst, name = max_grad_diff(ref, got)
    assert worst < TOL, (name, worst)


CALLS: list[int] = []


def _reference_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                                cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None,
                                **kwargs):
    """flash-attn's varlen contract, computed per text with SDPA (CPU stand-in for the GPU kernel)."""
    assert attention_mask is None and query.shape[0] == 1, "varlen attention expects one unpadded row"
    CALLS.append(len(cu_seq_lens_q) - 1)
    assert cu_seq_lens_q is not None and max_length_q == int(cu_seq_lens_q.diff().max())
    outs = []
    bounds = cu_seq_lens_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        outs.append(F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scale=scaling))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def test_flash_varlen_path_hands_text_boundaries_to_the_attention(monkeypatch):
    """On flash_attention_2 the batch becomes one row and cu_seq_lens/max_length reach the attention function."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    module = tiny_module().eval()
    features = ragged(6, 16, torch.Generator().manual_seed(6))
    ids, mask = features["input_ids"], features["attention_mask"]
    with torch.no_grad():
        padded = module.model(ids, mask)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _reference_varlen_attention)
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2",
                        lambda *args, attention_mask=None, **kw: attention_mask)
    monkeypatch.setattr(module.model.encoder.config, "_attn_implementation", "flash_attention_2")
    with torch.no_grad():
        packed = encode_rows(module.model, ids, mask, packing=True)
    assert CALLS == [6, 6]  # each of the 2 layers attended over 6 texts
    for field in ("dense", "sparse", "colbert"):
        torch.testing.assert_close(getattr(packed, field), getattr(padded, field), atol=TOL, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_heads_on_real_tokens_equal_heads_on_padded_states(pooling):
    """Each head given the real tokens in any order (``positions``) returns the padded layout's values and passes
    the same gradients to the states of the real tokens."""
    from m3lit.model.heads import ColbertHead, DenseHead, SparseHead

    gen = torch.Generator().manual_seed(11)
    features = ragged(6, 12, gen)
    ids, mask = features["input_ids"], features["attention_mask"]
    batch, length = ids.shape
    hidden = torch.randn(batch, length, 8, generator=gen)
    real = mask.reshape(-1).nonzero().squeeze(1)
    positions = real[torch.randperm(real.numel(), generator=gen)]  # packing order is not the padded order
    torch.manual_seed(0)
    heads = {"dense": DenseHead(pooling), "sparse": SparseHead(8, [0, 1, 2]), "colbert": ColbertHead(8, 5)}
    weights = {name: torch.randn(batch, *shape, generator=gen) for name, shape in
               (("dense", (8,)), ("sparse", (length,)), ("colbert", (length - 1, 5)))}

    def run(name, states, pos):
        head = heads[name]
        out = head(states, mask, pos) if name != "sparse" else head(states, ids, mask, pos)
        return out[0] if isinstance(out, tuple) else out

    for name in heads:
        padded_states = hidden.clone().requires_grad_()
        tokens = hidden.reshape(-1, 8)[positions].clone().requires_grad_()
        padded, packed = run(name, padded_states, None), run(name, tokens, positions)
        torch.testing.assert_close(packed, padded, atol=1e-6, rtol=0)
        (padded * weights[name]).sum().backward()
        (packed * weights[name]).sum().backward()
        torch.testing.assert_close(tokens.grad, padded_states.grad.reshape(-1, 8)[positions], atol=1e-6, rtol=0)
        for param in heads[name].parameters():
            param.grad = None


def test_packed_heads_compute_no_padding():
    """On a packed batch the multi-vector projection runs on the real tokens after each text's first, nothing more."""
    module = tiny_module().eval()
    features = ragged(7, 24, torch.Generator().manual_seed(3))
    rows = []
    hook = module.model.colbert_head.linear.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        encode_rows(module.model, features["input_ids"], features["attention_mask"], packing=True)
    hook.remove()
    assert rows == [int(features["attention_mask"].sum()) - 7]
