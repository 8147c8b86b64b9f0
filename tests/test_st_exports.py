"""The lexical and multi-vector exports load in sentence-transformers' SparseEncoder / MultiVectorEncoder (and the
PyLate folder in MultiVectorEncoder's PyLate loader) with outputs and scores equal to M3Embedder's."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import INTEROP_TEXTS

from m3lit import M3Embedder
from m3lit.inference.head_exports import (
    PYLATE_CONFIG_KEYS,
    PYLATE_DENSE_TYPE,
    export_multi_vector_encoder,
    export_pylate,
    export_sparse_encoder,
)

TINY = str(Path(__file__).parent / "fixtures" / "tiny_m3")
MAX_LENGTH = 48
TEXTS = INTEROP_TEXTS
# The keyword arguments of PyLate 1.6.0's ``models.Dense.__init__`` (``Dense.load`` passes it 1_Dense/config.json).
PYLATE_DENSE_PARAMS = {"in_features", "out_features", "bias", "activation_function", "init_weight", "init_bias",
                       "use_residual"}


@pytest.fixture(scope="module")
def embedder():
    return M3Embedder.from_pretrained(TINY)


@pytest.fixture(scope="module")
def want(embedder):
    out = embedder.encode(TEXTS, batch_size=2, max_length=MAX_LENGTH, return_dense=False)
    assert len(embedder.tokenize(TEXTS[-1:], 10_000)[0]) > MAX_LENGTH
    return out


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("st_exports")


def test_sparse_encoder_export_equals_lexical_weights(embedder, want, out_dir):
    from sentence_transformers import SparseEncoder

    folder = export_sparse_encoder(embedder, str(out_dir / "sparse"))
    with open(os.path.join(folder, "modules.json")) as f:
        assert [m["type"] for m in json.load(f)][1] == "m3lit.inference.st_modules.M3SparsePooling"
    model = SparseEncoder(folder, device="cpu", trust_remote_code=True)
    assert model.max_seq_length == 128  # tiny_m3: 130 positions - XLM-R offset 2
    assert model.similarity_fn_name == "dot"
    assert model.get_embedding_dimension() == embedder.model.encoder.config.vocab_size
    model.max_seq_length = MAX_LENGTH
    got = model.encode(TEXTS, batch_size=2, convert_to_sparse_tensor=False)
    assert got.shape == (len(TEXTS), embedder.model.encoder.config.vocab_size)
    for row, weights in zip(got, want["sparse"]):
        assert set(torch.nonzero(row).flatten().tolist()) == set(weights)  # special ids and zeros left out
        for token, w in weights.items():
            assert row[token].item() == pytest.approx(w, abs=1e-5)
    scores = model.similarity(model.encode(TEXTS), model.encode(TEXTS))
    for i, a in enumerate(want["sparse"]):
        for j, b in enumerate(want["sparse"]):
            assert scores[i, j].item() == pytest.approx(M3Embedder.lexical_matching_score(a, b), abs=1e-5)


def test_sparse_encoder_export_needs_trusted_m3lit_code(embedder, out_dir, monkeypatch):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.util import environment

    folder = export_sparse_encoder(embedder, str(out_dir / "sparse_trust"))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SparseEncoder(folder, device="cpu")
    real = environment.get_installed_version
    monkeypatch.setattr(environment, "get_installed_version", lambda name: None if name == "m3lit" else real(name))
    with pytest.raises(ImportError, match="m3lit"):  # the folder's requirements name m3lit before anything loads
        SparseEncoder(folder, device="cpu", trust_remote_code=True)


def test_multi_vector_encoder_export_equals_colbert_vectors(embedder, want, out_dir):
    from sentence_transformers import MultiVectorEncoder

    folder = export_multi_vector_encoder(embedder, str(out_dir / "mve"))
    with open(os.path.join(folder, "modules.json")) as f:
        types = [m["type"] for m in json.load(f)]
    assert all(t.startswith("sentence_transformers.") for t in types)  # loads without trust_remote_code
    assert [t.rsplit(".", 1)[-1] for t in types] == ["Transformer", "Dense", "MultiVectorMask", "Normalize"]
    model = MultiVectorEncoder(folder, device="cpu")
    assert model.max_seq_length == 128
    assert model.similarity_fn_name == "meanmaxsim"
    model.max_seq_length = MAX_LENGTH
    queries = model.encode_query(TEXTS, batch_size=2, convert_to_numpy=True)
    documents = model.encode_document(TEXTS, batch_size=2, convert_to_numpy=True)
    for q, d, w in zip(queries, documents, want["colbert"]):
        assert q.shape == d.shape == w.shape  # tokens - 1: CLS dropped, EOS kept
        np.testing.assert_allclose(q, w, atol=1e-5)
        np.testing.assert_allclose(d, w, atol=1e-5)
    scores = model.similarity(queries, documents)
    for i, q in enumerate(want["colbert"]):
        for j, p in enumerate(want["colbert"]):
            assert scores[i, j].item() == pytest.approx(M3Embedder.colbert_score(q, p), abs=1e-5)


def test_multi_vector_encoder_drops_a_literal_cls_token_inside_a_text(embedder, out_dir):
    """The CLS skiplist drops the CLS id wherever it occurs; m3lit drops only the first position."""
    from sentence_transformers import MultiVectorEncoder

    model = MultiVectorEncoder(export_multi_vector_encoder(embedder, str(out_dir / "mve_cls")), device="cpu")
    text = f"a {embedder.tokenizer.cls_token} b"
    ours = embedder.encode([text], return_dense=False, return_sparse=False)["colbert"][0]
    assert model.encode_document([text], convert_to_numpy=True)[0].shape[0] == ours.shape[0] - 1


def test_exports_from_a_directory_path_keep_max_seq_length(want, out_dir):
    from sentence_transformers import MultiVectorEncoder, SparseEncoder

    sparse = SparseEncoder(export_sparse_encoder(TINY, str(out_dir / "sparse32"), max_seq_length=MAX_LENGTH),
                           device="cpu", trust_remote_code=True)
    multi = MultiVectorEncoder(export_multi_vector_encoder(TINY, str(out_dir / "mve32"), max_seq_length=MAX_LENGTH),
                               device="cpu")
    assert sparse.max_seq_length == multi.max_seq_length == MAX_LENGTH
    long = TEXTS[-1]
    assert set(torch.nonzero(sparse.encode(long, convert_to_sparse_tensor=False)).flatten().tolist()) == \
        set(want["sparse"][-1])
    np.testing.assert_allclose(multi.encode_document(long, convert_to_numpy=True), want["colbert"][-1], atol=1e-5)


def test_pylate_export_layout_and_outputs(embedder, want, out_dir):
    from safetensors.torch import load_file
    from sentence_transformers import MultiVectorEncoder

    folder = export_pylate(embedder, str(out_dir / "pylate"), max_seq_length=MAX_LENGTH)
    with open(os.path.join(folder, "modules.json")) as f:
        modules = json.load(f)
    assert [(m["path"], m["type"]) for m in modules] == [("", "sentence_transformers.models.Transformer"),
                                                          ("1_Dense", PYLATE_DENSE_TYPE)]
    with open(os.path.join(folder, "config_sentence_transformers.json")) as f:
        config = json.load(f)
    assert set(PYLATE_CONFIG_KEYS) <= set(config)
    assert config["model_type"] == "ColBERT" and config["similarity_fn_name"] == "MaxSim"
    assert config["query_prefix"] == config["document_prefix"] == ""
    assert config["do_query_expansion"] is False and config["attend_to_expansion_tokens"] is False
    assert config["query_length"] == config["document_length"] == MAX_LENGTH
    assert config["skiplist_words"] == [embedder.tokenizer.cls_token]
    with open(os.path.join(folder, "1_Dense", "config.json")) as f:
        dense = json.load(f)
    assert set(dense) <= PYLATE_DENSE_PARAMS
    assert dense["activation_function"] == "torch.nn.modules.linear.Identity"
    linear = embedder.model.colbert_head.linear
    weights = load_file(os.path.join(folder, "1_Dense", "model.safetensors"))
    torch.testing.assert_close(weights["linear.weight"], linear.weight.detach())
    torch.testing.assert_close(weights["linear.bias"], linear.bias.detach())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json"):
        assert os.path.isfile(os.path.join(folder, name))

    # sentence-transformers' loader of PyLate folders: documents are M3's vectors (the skiplist drops CLS);
    # queries keep the CLS vector (PyLate skips words in documents only), and MaxSim is a sum.
    model = MultiVectorEncoder(folder, device="cpu")
    documents = model.encode_document(TEXTS, batch_size=2, convert_to_numpy=True)
    queries = model.encode_query(TEXTS, batch_size=2, convert_to_numpy=True)
    for q, d, w in zip(queries, documents, want["colbert"]):
        np.testing.assert_allclose(d, w, atol=1e-5)
        assert q.shape[0] == w.shape[0] + 1
        np.testing.assert_allclose(q[1:], w, atol=1e-5)
    scores = model.similarity(queries, documents)
    for i, q in enumerate(want["colbert"]):
        cls = torch.from_numpy(queries[i][:1])
        for j, p in enumerate(want["colbert"]):
            cls_term = (cls @ torch.from_numpy(p).T).max().item()
            expected = M3Embedder.colbert_score(q, p) * len(q) + cls_term
            assert scores[i, j].item() == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory):
    """tiny_m3 without its lexical and multi-vector weights: only the dense head counts as trained."""
    path = tmp_path_factory.mktemp("untrained") / "model"
    shutil.copytree(TINY, path, ignore=shutil.ignore_patterns("sparse_linear.pt", "colbert_linear.pt"))
    return str(path)


@pytest.mark.parametrize("export, head", [(export_sparse_encoder, "sparse"), (export_multi_vector_encoder, "colbert"),
                                          (export_pylate, "colbert")])
def test_export_of_an_untrained_head_is_refused(untrained_dir, tmp_path, export, head):
    embedder = M3Embedder.from_pretrained(untrained_dir, fresh_heads=True)
    assert embedder.trained_heads == ("dense",)
    for source in (embedder, untrained_dir):
        with pytest.raises(ValueError, match=f"export refused: this model's {head} head.*never trained"):
            export(source, str(tmp_path / "out"))
        assert not os.path.exists(tmp_path / "out")


def test_unnormalised_multi_vector_head(out_dir):
    """A head trained with model.normalize=false: no Normalize module; PyLate (which always normalises) refused."""
    from sentence_transformers import MultiVectorEncoder

    embedder = M3Embedder.from_pretrained(TINY)
    embedder.model.colbert_head.normalize = False
    ours = embedder.encode(TEXTS[:2], max_length=MAX_LENGTH, return_dense=False, return_sparse=False)["colbert"]
    assert not np.allclose(np.linalg.norm(ours[0], axis=1), 1.0)
    model = MultiVectorEncoder(export_multi_vector_encoder(embedder, str(out_dir / "mve_raw")), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Dense", "MultiVectorMask"]
    model.max_seq_length = MAX_LENGTH
    for got, w in zip(model.encode_document(TEXTS[:2], convert_to_numpy=True), ours):
        np.testing.assert_allclose(got, w, atol=1e-5)
    with pytest.raises(ValueError, match="PyLate always L2-normalises"):
        export_pylate(embedder, str(out_dir / "pylate_raw"))
