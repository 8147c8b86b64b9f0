"""Interop: a BGE-M3 directory written by m3lit loads in FlagEmbedding's BGEM3FlagModel, and the dense-only
sentence-transformers export loads in SentenceTransformer, both with outputs equal to M3Embedder's."""
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import INTEROP_TEXTS

from m3lit import M3Embedder
from m3lit.inference.st_export import export_sentence_transformers

TINY = str(Path(__file__).parent / "fixtures" / "tiny_m3")
TEXTS = INTEROP_TEXTS


def flag_model_class():
    """BGEM3FlagModel; FlagEmbedding 1.4.2 imports a module that transformers 5 removed, so it is stubbed
    (only its rerankers use it)."""
    name = "transformers.modeling_attn_mask_utils"
    try:
        __import__(name)
    except ModuleNotFoundError:
        stub = types.ModuleType(name)
        stub.__getattr__ = lambda attr: type(attr, (), {})  # any name imports as a placeholder class
        sys.modules[name] = stub
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """tiny_m3 loaded and saved again by m3lit."""
    out = str(tmp_path_factory.mktemp("m3") / "model")
    M3Embedder.from_pretrained(TINY).save_pretrained(out)
    return out


def test_saved_directory_loads_in_flagembedding_with_equal_outputs(saved):
    ours = M3Embedder.from_pretrained(saved).encode(TEXTS, batch_size=2, max_length=48)
    flag = flag_model_class()(saved, use_fp16=False, devices="cpu")
    theirs = flag.encode(TEXTS, batch_size=2, max_length=48, return_dense=True, return_sparse=True,
                         return_colbert_vecs=True)
    np.testing.assert_allclose(ours["dense"], theirs["dense_vecs"], atol=1e-5)
    assert len(ours["sparse"]) == len(theirs["lexical_weights"]) == len(TEXTS)
    for a, b in zip(ours["sparse"], theirs["lexical_weights"]):
        assert set(a) == {int(t) for t in b}
        for t, w in a.items():
            assert w == pytest.approx(float(b[str(t)]), abs=1e-5)
    for a, b in zip(ours["colbert"], theirs["colbert_vecs"]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)
    # and the scores FlagEmbedding computes from them
    q, p = ours["sparse"][0], ours["sparse"][1]
    assert M3Embedder.lexical_matching_score(q, p) == pytest.approx(
        flag.compute_lexical_matching_score(theirs["lexical_weights"][0], theirs["lexical_weights"][1]), abs=1e-6)
    assert M3Embedder.colbert_score(ours["colbert"][0], ours["colbert"][1]) == pytest.approx(
        float(flag.colbert_score(theirs["colbert_vecs"][0], theirs["colbert_vecs"][1])), abs=1e-5)


def test_saved_directory_matches_reference_checkpoint(saved):
    """Saving does not change the model: outputs equal those of the original reference directory."""
    a = M3Embedder.from_pretrained(TINY).encode(TEXTS, max_length=48)
    b = M3Embedder.from_pretrained(saved).encode(TEXTS, max_length=48)
    np.testing.assert_array_equal(a["dense"], b["dense"])
    for x, y in zip(a["colbert"], b["colbert"]):
        np.testing.assert_array_equal(x, y)


def test_sentence_transformers_export_gives_equal_dense_vectors(saved, tmp_path):
    from sentence_transformers import SentenceTransformer

    emb = M3Embedder.from_pretrained(saved)
    folder = export_sentence_transformers(emb, str(tmp_path / "st"))
    with open(os.path.join(folder, "modules.json")) as f:
        types_ = [m["type"].rsplit(".", 1)[-1] for m in json.load(f)]
    assert types_ == ["Transformer", "Pooling", "Normalize"]
    with open(os.path.join(folder, "1_Pooling", "config.json")) as f:
        assert json.load(f)["pooling_mode_cls_token"] is True
    st = SentenceTransformer(folder, device="cpu")
    assert st.max_seq_length == 128  # tiny_m3: 130 positions - XLM-R offset 2
    st.max_seq_length = 48
    got = st.encode(TEXTS, batch_size=2, convert_to_numpy=True)
    want = emb.encode(TEXTS, max_length=48, return_sparse=False, return_colbert=False)["dense"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_export_from_a_directory_path(saved, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = export_sentence_transformers(saved, str(tmp_path / "st2"), max_seq_length=32)
    st = SentenceTransformer(folder, device="cpu")
    assert st.max_seq_length == 32
    want = M3Embedder.from_pretrained(saved).encode(TEXTS[:3], max_length=32, return_sparse=False,
                                                    return_colbert=False)["dense"]
    np.testing.assert_allclose(st.encode(TEXTS[:3]), want, atol=1e-5)


class FlagAdapter:
    """BGEM3FlagModel behind the encoder interface that evaluate_beir takes."""

    def __init__(self, model):
        self.model = model

    def encode(self, texts, batch_size, max_length, return_dense, return_sparse, return_colbert):
        out = self.model.encode(list(texts), batch_size=batch_size, max_length=max_length, return_dense=True,
                                return_sparse=True, return_colbert_vecs=True)
        return {"dense": out["dense_vecs"], "sparse": [{int(t): float(w) for t, w in d.items()}
                                                       for d in out["lexical_weights"]],
                "colbert": out["colbert_vecs"]}


def test_evaluation_equal_with_flagembedding_encoder(saved, tmp_path):
    from test_eval_evaluate import make_dataset

    from m3lit.eval import evaluate_beir

    path = make_dataset(str(tmp_path / "ds"), seed=5, n_docs=60, n_queries=15)
    ours = evaluate_beir(M3Embedder.from_pretrained(saved), path, max_length=64)
    theirs = evaluate_beir(FlagAdapter(flag_model_class()(saved, use_fp16=False, devices="cpu")), path,
                           max_length=64)
    for mode in ("dense", "sparse", "colbert", "dense+sparse", "all"):
        assert ours["ds"][mode]["ndcg@10"] > 0
        for metric, value in theirs["ds"][mode].items():
            assert ours["ds"][mode][metric] == pytest.approx(value, abs=1e-6), (mode, metric)
