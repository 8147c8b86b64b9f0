import numpy as np
import pytest
import torch
from test_eval_evaluate import make_dataset

from m3lit import M3Embedder
from m3lit.eval import evaluate_beir, load_beir
from m3lit.inference.mcls import insert_mcls, mcls_length, mcls_pool, mcls_token_mask, mcls_truncated

CLS, EOS = 0, 2


def test_layout_puts_cls_every_interval():
    ids = insert_mcls(list(range(10, 30)), CLS, EOS, max_length=100, interval=8)
    assert [i for i, t in enumerate(ids) if t == CLS] == [0, 8, 16]
    assert ids[-1] == EOS and [t for t in ids if t not in (CLS, EOS)] == list(range(10, 30))
    assert len(ids) == mcls_length(20, 8)


@pytest.mark.parametrize("n", [0, 1, 6, 7, 8, 14, 15, 40, 200])
@pytest.mark.parametrize("max_length", [3, 9, 16, 31, 64])
def test_truncation_is_consistent(n, max_length):
    ids = insert_mcls(list(range(10, 10 + n)), CLS, EOS, max_length=max_length, interval=8)
    content = [t for t in ids if t not in (CLS, EOS)]
    assert len(ids) <= max_length and ids[0] == CLS and ids[-1] == EOS
    assert content == list(range(10, 10 + len(content)))  # a prefix of the text
    assert mcls_truncated(n, max_length, 8) == (len(content) < n)
    assert ids[-2] != CLS or n == 0  # never a CLS without content after it


def test_pooling_is_mean_of_cls_states():
    hidden = torch.randn(2, 6, 4)
    input_ids = torch.tensor([[CLS, 5, CLS, 6, EOS, 1], [CLS, 7, EOS, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    pooled = mcls_pool(hidden, input_ids, mask, CLS)
    torch.testing.assert_close(pooled[0], (hidden[0, 0] + hidden[0, 2]) / 2)
    torch.testing.assert_close(pooled[1], hidden[1, 0])
    assert mcls_token_mask(input_ids, mask, CLS)[0].tolist() == [False, True, False, True, True, False]


def test_with_a_real_encoder_short_text_equals_plain_cls(tiny_m3_dir):
    emb = M3Embedder.from_pretrained(tiny_m3_dir)
    tok = emb.tokenizer
    text = "retrieval with several heads"
    content = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([insert_mcls(content, tok.cls_token_id, tok.eos_token_id, 128, interval=256)])
    assert ids[0].tolist() == tok(text)["input_ids"]  # one segment: the ordinary tokenization
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = emb.model.hidden_states(ids, mask)
    pooled = torch.nn.functional.normalize(mcls_pool(hidden, ids, mask, tok.cls_token_id), dim=-1)
    plain = emb.encode([text], return_sparse=False, return_colbert=False)["dense"]
    torch.testing.assert_close(pooled, torch.from_numpy(plain), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny(tiny_m3_dir):
    return M3Embedder.from_pretrained(tiny_m3_dir)


TEXTS = ["short text", "another short passage about heads", " ".join(["retrieval of long documents"] * 12), "x"]


def test_encode_mcls_with_one_segment_equals_plain_encode(tiny):
    plain = tiny.encode(TEXTS, max_length=128)
    got = tiny.encode(TEXTS, batch_size=3, max_length=128, mcls=True)
    np.testing.assert_allclose(got["dense"], plain["dense"], atol=1e-5)
    for a, b in zip(got["sparse"], plain["sparse"]):
        assert set(a) == set(b) and all(abs(a[t] - b[t]) < 1e-5 for t in a)
    for a, b in zip(got["colbert"], plain["colbert"]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_encode_mcls_several_segments(tiny):
    tok = tiny.tokenizer
    text = TEXTS[2]
    content = tok(text, add_special_tokens=False)["input_ids"]
    assert len(content) > 40
    got = tiny.encode([text], max_length=128, mcls=True, mcls_interval=16)
    ids = torch.tensor([insert_mcls(content, tok.cls_token_id, tok.eos_token_id, 128, interval=16)])
    with torch.no_grad():
        hidden = tiny.model.hidden_states(ids, torch.ones_like(ids))[0]
    cls_positions = [i for i, t in enumerate(ids[0].tolist()) if t == tok.cls_token_id]
    assert cls_positions[:3] == [0, 16, 32]
    want = torch.nn.functional.normalize(hidden[cls_positions].mean(0), dim=-1)
    np.testing.assert_allclose(got["dense"][0], want.numpy(), atol=1e-5)
    kept = min(len(content), 128 - 1 - len(cls_positions)) + 1  # content tokens + EOS, inserted CLS dropped
    assert got["colbert"][0].shape == (kept, tiny.model.colbert_head.linear.out_features)
    assert tok.cls_token_id not in got["sparse"][0]


def test_evaluation_with_mcls_counts_truncation(tiny, tmp_path):
    path = make_dataset(str(tmp_path / "ds"), seed=2, n_docs=30, n_queries=8)
    plain = evaluate_beir(tiny, path, max_length=120)
    mcls = evaluate_beir(tiny, path, max_length=120, mcls=True)  # interval 256 > max_length: identical inputs
    for mode in ("dense", "sparse", "colbert", "all"):
        assert mcls["ds"][mode] == pytest.approx(plain["ds"][mode], abs=1e-6)
    assert mcls["ds"]["stats"]["truncated_passages"] == plain["ds"]["stats"]["truncated_passages"]
    short = evaluate_beir(tiny, path, max_length=40, mcls=True, mcls_interval=16)
    content = [len(tiny.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in load_beir(path).corpus.values()]
    assert short["ds"]["stats"]["truncated_passages"] == sum(mcls_truncated(n, 40, 16) for n in content)
