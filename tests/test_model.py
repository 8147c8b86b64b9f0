"""Model: head subsets train only what they should; export -> reload gives identical outputs; bad checkpoints fail."""
import os
import shutil

import numpy as np
import pytest
import torch

from m3lit import M3Embedder
from m3lit.inference.embedder import load_tokenizer
from m3lit.loss import M3Loss
from m3lit.model import build_m3_model
from m3lit.module import M3LightningModule

TEXTS = ["What is BGE M3?", "Definition of BM25", "the encoder embeds long texts", "BM25 ranks documents."]


def tiny_model(tiny_m3_dir, heads=None, **kw):
    tok = load_tokenizer(tiny_m3_dir)
    cfg = dict(model_type="xlm-roberta", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
    return build_m3_model(tok, encoder_config=cfg, heads=heads, **kw), tok


def batch(tok, queries, passages):
    q = tok(queries, padding=True, return_tensors="pt")
    p = tok(passages, padding=True, return_tensors="pt")
    return {"queries": dict(q), "passages": dict(p), "teacher_scores": None, "no_in_batch_neg": False, "meta": {}}


@pytest.mark.parametrize("heads", [("dense",), ("dense", "sparse"), ("sparse", "colbert"),
                                   ("dense", "sparse", "colbert")])
def test_head_subsets(tiny_m3_dir, heads):
    torch.manual_seed(0)
    model, tok = tiny_model(tiny_m3_dir, heads={h: h in heads for h in ("dense", "sparse", "colbert")})
    assert model.active_heads == heads
    module = M3LightningModule(model, M3Loss(), tok)
    out = module.forward_loss(batch(tok, TEXTS[:2], TEXTS))
    assert set(out.head_losses) == set(heads) | ({"ensemble"} if len(heads) > 1 else set())
    out.loss.backward()
    for name in ("sparse", "colbert"):
        grads = [p.grad for p in getattr(model, f"{name}_head").parameters()]
        if name in heads:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads), name
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_no_in_batch_negatives_scores_only_the_group(tiny_m3_dir):
    model, tok = tiny_model(tiny_m3_dir)
    module = M3LightningModule(model, M3Loss(), tok)
    b = batch(tok, TEXTS[:2], TEXTS)
    q, p = module.encode(b["queries"]), module.encode(b["passages"])
    full, pos_full, g = module.compute_scores(q, p, no_in_batch_neg=False)
    local, pos_local, _ = module.compute_scores(q, p, no_in_batch_neg=True)
    assert g == 2 and full["dense"].shape == (2, 4) and local["dense"].shape == (2, 2)
    assert pos_full.tolist() == [0, 2] and pos_local.tolist() == [0, 0]
    torch.testing.assert_close(local["colbert"][1], full["colbert"][1, 2:4])


def test_export_reload_identical(tiny_m3_dir, tmp_path):
    torch.manual_seed(0)
    model, tok = tiny_model(tiny_m3_dir, colbert_dim=8)
    emb = M3Embedder(model, tok)
    before = emb.encode(TEXTS)
    path = emb.save_pretrained(str(tmp_path / "export"))
    assert {"config.json", "colbert_linear.pt", "sparse_linear.pt", "tokenizer.json"} <= set(os.listdir(path))
    after = M3Embedder.from_pretrained(path).encode(TEXTS)
    np.testing.assert_array_equal(before["dense"], after["dense"])
    assert before["sparse"] == after["sparse"]
    for a, b in zip(before["colbert"], after["colbert"]):
        assert a.shape[1] == 8
        np.testing.assert_array_equal(a, b)


def test_bgem3_checkpoint_roundtrip_keeps_reference_outputs(tiny_m3_dir, tmp_path, reference):
    emb = M3Embedder.from_pretrained(tiny_m3_dir)
    again = M3Embedder.from_pretrained(emb.save_pretrained(str(tmp_path / "again")))
    np.testing.assert_allclose(again.encode(reference["queries"])["dense"],
                               np.array(reference["queries_out"]["dense_vecs"]), atol=1e-5)


def test_checkpoint_of_another_model_is_rejected(tiny_m3_dir, tmp_path):
    model, tok = tiny_model(tiny_m3_dir)
    bad = tmp_path / "bad"
    M3Embedder(model, tok).save_pretrained(str(bad))
    shutil.copy(os.path.join(tiny_m3_dir, "colbert_linear.pt"), bad / "colbert_linear.pt")
    os.remove(bad / "m3lit_export.json")  # a hand-assembled folder (with the marker: a modified export, refused)
    with pytest.raises(ValueError, match="colbert_linear.pt.*another model"):
        M3Embedder.from_pretrained(str(bad))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        M3Embedder.from_pretrained(str(tmp_path / "missing"))


def test_bad_model_options(tiny_m3_dir):
    with pytest.raises(ValueError, match="unknown head"):
        tiny_model(tiny_m3_dir, heads={"dense": True, "bm25": True})
    with pytest.raises(ValueError, match="at least one"):
        tiny_model(tiny_m3_dir, heads={"dense": False, "sparse": False, "colbert": False})
    with pytest.raises(ValueError, match="attn_implementation"):
        tiny_model(tiny_m3_dir, attn_implementation="magic")


def test_colbert_init_identity_starts_as_maxsim_over_the_token_states(tiny_m3_dir, tmp_path):
    import torch.nn.functional as F

    tokenizer = load_tokenizer(tiny_m3_dir)
    encoder_only = tmp_path / "encoder"  # without BGE-M3 head files: the multi-vector head starts fresh
    shutil.copytree(tiny_m3_dir, encoder_only, ignore=shutil.ignore_patterns("*_linear.pt", "m3_config.json"))
    model = build_m3_model(tokenizer, path=str(encoder_only), colbert_init="identity").eval()
    batch = tokenizer(["a short text", "another, longer text to encode"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.encoder(**batch).last_hidden_state
        vecs, mask = model.colbert_head(hidden, batch["attention_mask"])
    expected = F.normalize(hidden[:, 1:] * batch["attention_mask"][:, 1:, None], dim=-1)
    torch.testing.assert_close(vecs, expected)
    loaded = build_m3_model(tokenizer, path=tiny_m3_dir, colbert_init="identity")  # a trained head is kept
    assert not torch.equal(loaded.colbert_head.linear.weight, torch.eye(loaded.colbert_head.linear.in_features))
    with pytest.raises(ValueError, match="colbert_init=identity needs model.colbert_dim"):
        build_m3_model(tokenizer, path=str(encoder_only), colbert_init="identity", colbert_dim=8)
    with pytest.raises(ValueError, match="model.colbert_init='eye'"):
        build_m3_model(tokenizer, path=str(encoder_only), colbert_init="eye")
