"""Packed attention without flash-attn: text by text through SDPA, grouped by length, exact, and lean in memory."""
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import ragged, tiny_module  # noqa: E402

from m3lit.scale.packing import packed_hidden_states  # noqa: E402
from m3lit.scale.varlen_attention import length_groups, varlen_calls, varlen_sdpa_forward  # noqa: E402


def packed_qkv(lengths, heads=2, dim=8, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(1, heads, total, dim, generator=g, requires_grad=requires_grad) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def per_text_reference(q, k, v, cu):
    """softmax(q kᵀ / √d) v of each text on its own (the padded encoder's attention of one row)."""
    bounds = cu.tolist()
    out = [F.softmax(q[0, :, s:e] @ k[0, :, s:e].transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v[0, :, s:e]
           for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(out, dim=1).transpose(0, 1)[None]  # (1, T, H, Dh)


def test_length_groups_keep_padding_within_the_slack():
    assert length_groups([10, 9, 9, 3, 10, 2]) == [[0, 4, 1, 2, 3], [5]]  # 5 × 10 ≤ 1.25 × 41; 6 × 10 > 1.25 × 43
    assert length_groups([8, 0, 4]) == [[0], [2]]  # empty texts take no call
    for lengths in ([5, 50, 7, 33, 31, 2, 64, 63, 1], [17] * 9, list(range(1, 40))):
        groups = length_groups(lengths)
        assert sorted(i for g in groups for i in g) == [i for i, n in enumerate(lengths) if n > 0]
        for g in groups:
            assert len(g) * max(lengths[i] for i in g) <= 1.25 * sum(lengths[i] for i in g)


@pytest.mark.parametrize("lengths", [[5, 3, 7, 7, 1], [12], [4, 4, 4, 4]])
def test_varlen_attention_equals_each_text_on_its_own(lengths):
    q, k, v, cu = packed_qkv(lengths)
    out, weights = varlen_sdpa_forward(None, q, k, v, None, cu_seq_lens_q=cu)
    assert weights is None and out.shape == (1, sum(lengths), 2, 8)
    torch.testing.assert_close(out, per_text_reference(q, k, v, cu), atol=1e-6, rtol=0)


def test_varlen_attention_gradients_equal_the_reference():
    lengths = [6, 2, 5, 5, 9]
    q, k, v, cu = packed_qkv(lengths, requires_grad=True)
    target = torch.randn(1, sum(lengths), 2, 8, generator=torch.Generator().manual_seed(1))
    (varlen_sdpa_forward(None, q, k, v, None, cu_seq_lens_q=cu)[0] * target).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (per_text_reference(q, k, v, cu) * target).sum().backward()
    for a, t in zip(got, (q, k, v)):
        torch.testing.assert_close(a, t.grad, atol=1e-6, rtol=0)


def test_varlen_attention_gathers_rows_without_an_accumulating_index_put():
    """The grouped texts' rows are gathered with index_select, whose backward adds whole rows: advanced indexing's
    backward (IndexBackward0, an accumulating index_put_) runs element by element on CPU."""
    q, k, v, cu = packed_qkv([6, 2, 5, 5, 9], requires_grad=True)
    assert len(length_groups([6, 2, 5, 5, 9])) < 5  # some texts share a padded call
    out = varlen_sdpa_forward(None, q, k, v, None, cu_seq_lens_q=cu)[0]
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    names = {type(node).__name__ for node in seen}
    assert "IndexSelectBackward0" in names and "IndexBackward0" not in names, names


def saved_bytes_and_grads(q, k, v, cu, dropout, seed=7, module=None):
    saved = []
    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        out = varlen_sdpa_forward(module, q, k, v, None, dropout=dropout, cu_seq_lens_q=cu)[0]
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    return sum(saved), out.detach(), grads


@pytest.mark.parametrize("fast", [False, True], ids=["stock_dropout", "fast_dropout"])
def test_attention_dropout_is_recomputed_not_stored(monkeypatch, fast):
    """With attention dropout the probabilities are not kept for the backward pass (the SDPA call is recomputed),
    and the recomputation replays the same dropout draws: outputs and gradients equal the stored path's — with
    SDPA's own dropout, and with the written-out attention of an attention module whose dropout is FastDropout."""
    from m3lit.scale import varlen_attention
    from m3lit.scale.fast_dropout import FastDropout

    module = types.SimpleNamespace(dropout=FastDropout(0.3)) if fast else None
    lengths = [64, 60, 58, 9]
    q, k, v, cu = packed_qkv(lengths, heads=4, dim=8, requires_grad=True)
    assert len(length_groups(lengths)) == 2  # the three long texts share one call, the short one has its own
    lean, out, grads = saved_bytes_and_grads(q, k, v, cu, dropout=0.3, module=module)
    stored_attention = varlen_attention._attention_fast_dropout if fast else F.scaled_dot_product_attention
    monkeypatch.setattr(varlen_attention, "_attention",
                        lambda q_, k_, v_, m, p, s, fast_=False: stored_attention(q_, k_, v_, m, p, scale=s))
    stored, out_stored, grads_stored = saved_bytes_and_grads(q, k, v, cu, dropout=0.3, module=module)
    probabilities = 3 * 4 * 64 * 64 * 4  # bytes of the long group's (3, 4, 64, 64) probabilities
    assert stored - lean >= 2 * probabilities, (stored, lean)  # softmax output and its dropped copy are gone
    torch.testing.assert_close(out, out_stored, atol=0, rtol=0)
    for a, b in zip(grads, grads_stored):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_varlen_needs_one_packed_row_with_boundaries():
    q, k, v, cu = packed_qkv([3, 4])
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        varlen_sdpa_forward(None, q, k, v, None)
    with pytest.raises(ValueError, match="2 row"):
        varlen_sdpa_forward(None, q.expand(2, -1, -1, -1), k, v, None, cu_seq_lens_q=cu)


def test_packed_calls_take_the_varlen_path_and_others_the_stock_sdpa():
    """The sdpa entry routes by the call's own arguments: the packed forward (cu_seq_lens, no mask) to the varlen
    path, once per layer; a padded forward (a mask) to transformers' own function."""
    module = tiny_module(attn="sdpa").eval()
    features = ragged(4, 12, torch.Generator().manual_seed(2))
    before = varlen_calls()
    with torch.no_grad():
        packed_hidden_states(module.model, features["input_ids"], features["attention_mask"])
        assert varlen_calls() - before == 2  # 2 layers
        module.model(features["input_ids"], features["attention_mask"])
    assert varlen_calls() - before == 2
    assert module.model.encoder.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_step_with_layer_checkpointing_equals_the_stored_step(attn):
    """Layers recomputed in the backward pass (as split_batch, model.gradient_checkpointing and FSDP's activation
    checkpointing do) stay on the packed path: with dropout on and the same seed, the checkpointed packed step has
    the loss and gradients of the packed step that stores its activations."""
    from scale_common import grads, max_grad_diff, random_batch

    batch = random_batch(queries=3, group=2, q_len=8, p_len=20, seed=9)

    def step(checkpointing):
        module = tiny_module(dropout=0.2, attn=attn, encoding={"packing": True})
        if checkpointing:
            module.model.encoder.gradient_checkpointing_enable({"use_reentrant": False})
        module.train()
        torch.manual_seed(0)
        out = module.forward_loss(batch)
        out.loss.backward()
        return float(out.loss), grads(module)

    ref_loss, ref = step(False)
    loss, got = step(True)
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    worst, name = max_grad_diff(ref, got)
    assert worst < 1e-5, (name, worst)


def test_an_encoder_whose_attention_skips_the_interface_is_refused(monkeypatch):
    import m3lit.scale.packing as packing

    module = tiny_module(attn="sdpa").eval()
    monkeypatch.setattr(packing, "varlen_calls", lambda: 0)  # as if no layer had taken the packed path
    features = ragged(3, 8, torch.Generator().manual_seed(3))
    with pytest.raises(RuntimeError, match="0 of 2 attention layers"):
        with torch.no_grad():
            packed_hidden_states(module.model, features["input_ids"], features["attention_mask"])


@pytest.mark.parametrize("mcls_interval", [None, 5])
def test_embedder_packs_like_training_with_the_padded_outputs(mcls_interval):
    """M3Embedder encodes unpadded by default; dense, lexical weights and token vectors equal the padded path's."""
    embedder = tiny_module(attn="sdpa").embedder()
    texts = ["a b c d e f g h i j k l", "x y", "hello world again and again", "z", "m n o p q r s t u v w"]
    kwargs = dict(batch_size=3, max_length=24, return_dense=True, return_sparse=True, return_colbert=True)
    if mcls_interval:
        kwargs.update(mcls=True, mcls_interval=mcls_interval)
    assert embedder.packing
    packed = embedder.encode(texts, **kwargs)
    embedder.packing = False
    padded = embedder.encode(texts, **kwargs)
    torch.testing.assert_close(torch.as_tensor(packed["dense"]), torch.as_tensor(padded["dense"]), atol=1e-5, rtol=0)
    for a, b in zip(packed["sparse"], padded["sparse"]):
        assert a.keys() == b.keys() and all(abs(a[t] - b[t]) < 1e-5 for t in a)
    for a, b in zip(packed["colbert"], padded["colbert"]):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), atol=1e-5, rtol=0)


def test_computed_tokens_count_what_the_encoder_computes():
    from m3lit.scale.packing import computed_tokens

    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert computed_tokens(mask, packing=False) == 18
    assert computed_tokens(mask, packing=True) == 12                  # one row of the real tokens
    rows = dict(packing=True, one_row=False)
    assert computed_tokens(mask, pack_length=6, **rows) == 12         # rows [6], [4 + 2]
    assert computed_tokens(mask, pack_length=3, **rows) == 12         # capacity grows to the longest text
    mask[1, 2] = 1                                                    # lengths 4, 3, 6: rows [6], [4], [3]
    assert computed_tokens(mask, pack_length=None, **rows) == 18      # capacity = the padded length


def test_long_texts_attend_in_query_chunks_with_the_same_result(monkeypatch):
    """On the recomputed (dropout) path long texts attend in chunks of query rows; softmax is per row, so with the
    dropout itself switched off the output and gradients equal one whole call."""

    from m3lit.scale import varlen_attention

    q, k, v, _ = packed_qkv([50], heads=2, dim=8, requires_grad=True)
    chunks = []

    def sdpa_without_dropout(q_, k_, v_, attn_mask=None, dropout_p=0.0, scale=None):
        chunks.append(q_.shape[2])
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask, scale=scale)

    monkeypatch.setattr(varlen_attention, "F", types.SimpleNamespace(scaled_dot_product_attention=sdpa_without_dropout))
    monkeypatch.setattr(varlen_attention, "MAX_SCORES", 2 * 50 * 7)  # 7 query rows per call
    got = varlen_attention._attention(q, k, v, None, 0.1, None)
    assert chunks == [7] * 7 + [1]
    (got ** 2).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    whole = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, whole, atol=1e-6, rtol=0)
    (whole ** 2).sum().backward()
    for a, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(a, t.grad, atol=1e-6, rtol=0)
