"""MTEB (2.x) evaluates the tiny checkpoint per head and hybrid through m3lit.inference.mteb_adapter, on a local
BEIR folder, offline; its nDCG@10 equals m3lit's own ``evaluate_beir`` for every mode."""
import json
import os
import random

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
import mteb  # noqa: E402  (a dev dependency)
from mteb.models import EncoderProtocol, SearchProtocol  # noqa: E402

from m3lit.cli.resolvers import default_assets_path  # noqa: E402
from m3lit.eval import evaluate_beir  # noqa: E402
from m3lit.inference import M3Embedder
from m3lit.inference.mteb_adapter import (
    M3DenseEncoder,
    M3MTEBModel,
    local_retrieval_task,
    m3lit_mteb_models,
    mode_weights,
)

# whole words of the tiny checkpoint's 133-token vocabulary, so that queries and documents share tokens
WORDS = ["retrieval", "embedding", "token", "query", "documents", "match", "support", "encode", "retrieve", "BERT",
         "M3", "the", "of", "a", "to", "dense", "sparse", "vector", "score", "model", "1", "2", "3", "8", "25", "19"]
N_DOCS, N_QUERIES, MAX_LENGTH = 30, 10, 128
MODES = ("dense", "sparse", "colbert", "dense+sparse", "all")


def write_beir(folder):
    """30 documents (two with the same text: tied scores) and 10 queries with graded judgments (2, 1 and 0).

    The corpus lists ids in decreasing order, so that m3lit's tie order (corpus position) and MTEB's
    (pytrec_eval: decreasing document id) agree."""
    rng = random.Random(7)
    docs = {f"d{i:02d}": " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))) for i in range(N_DOCS)}
    docs["d05"] = docs["d17"]
    ids = sorted(docs, reverse=True)
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for i, d in enumerate(ids):
            f.write(json.dumps({"_id": d, "title": "M3" if i % 4 == 0 else "", "text": docs[d]}) + "\n")
    queries, qrels = {}, []
    for q in range(N_QUERIES):
        target = "d17" if q == 0 else rng.choice(ids)
        words = docs[target].split()
        queries[f"q{q}"] = " ".join(rng.sample(words, min(4, len(words))) + [rng.choice(WORDS)])
        other, judged_out = rng.sample([d for d in ids if d != target], 2)
        qrels += [(f"q{q}", target, 2), (f"q{q}", other, 1), (f"q{q}", judged_out, 0)]
    with open(folder / "queries.jsonl", "w") as f:
        for q, text in queries.items():
            f.write(json.dumps({"_id": q, "text": text}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t{g}\n" for q, d, g in qrels)
    return folder


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "tinybeir")


@pytest.fixture(scope="module")
def embedder(tiny_m3_dir):
    return M3Embedder.from_pretrained(tiny_m3_dir)


@pytest.fixture(scope="module")
def m3lit_ndcg(embedder, beir_dir):
    """m3lit's nDCG@10 per mode; hybrids over every document (candidate_depth = corpus size)."""
    results = evaluate_beir(embedder, str(beir_dir), metrics=("ndcg@10",), max_length=MAX_LENGTH,
                            query_max_length=MAX_LENGTH, candidate_depth=N_DOCS)["tinybeir"]
    return {mode: results[mode]["ndcg@10"] for mode in MODES}


def mteb_scores(model, task, cache_dir):
    result = mteb.evaluate(model, task, cache=mteb.ResultCache(cache_path=str(cache_dir)),
                           overwrite_strategy="always", co2_tracker=False, show_progress_bar=False,
                           encode_kwargs={"batch_size": 32})
    (task_result,) = result.task_results
    (scores,) = task_result.scores["test"]
    return scores


def test_local_task_reads_the_beir_folder(beir_dir):
    task = local_retrieval_task(beir_dir, name="M3LitTinyBEIR")
    task.load_data()
    split = task.dataset["default"]["test"]
    assert task.metadata.eval_splits == ["test"] and task.metadata.main_score == "ndcg_at_10"
    assert len(split["corpus"]) == N_DOCS and len(split["queries"]) == N_QUERIES
    assert split["corpus"]["text"][0].startswith("M3 ")  # title + " " + text
    assert sorted(g for j in split["relevant_docs"].values() for g in j.values()) == [0] * 10 + [1] * 10 + [2] * 10


def test_models_per_mode_and_weights(embedder):
    models = m3lit_mteb_models(embedder)
    assert list(models) == list(MODES)
    assert isinstance(models["dense"], M3DenseEncoder) and isinstance(models["all"], M3MTEBModel)
    # MTEB runs its own search over the dense encoder, and the others' index + search
    assert isinstance(models["dense"], EncoderProtocol) and not isinstance(models["dense"], SearchProtocol)
    assert all(isinstance(models[m], SearchProtocol) and not isinstance(models[m], EncoderProtocol)
               for m in MODES[1:])
    assert models["dense+sparse"].weights == {"dense": 1.0, "sparse": 0.3}
    assert models["all"].weights == {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}
    assert mode_weights("sparse+colbert", {"colbert": 2}) == {"sparse": 0.3, "colbert": 2.0}
    metas = [m.mteb_model_meta for m in models.values()]
    assert {m.name for m in metas} == {"m3lit/m3-model"} and len({m.experiment_name for m in metas}) == len(MODES)
    assert metas[0].revision == metas[-1].revision and len(metas[0].revision) == 12
    assert [m.model_type for m in metas] == [["dense"], ["sparse"], ["late-interaction"], ["hybrid"], ["hybrid"]]
    with pytest.raises(ValueError, match="mode"):
        M3MTEBModel(embedder, "dense+lexical")


def test_mteb_ndcg_equals_m3lit_per_mode(embedder, beir_dir, m3lit_ndcg, tmp_path):
    task = local_retrieval_task(beir_dir, name="M3LitTinyBEIR")
    models = m3lit_mteb_models(embedder, max_length=MAX_LENGTH)
    # the dense head twice: MTEB's own search over M3DenseEncoder vectors, and m3lit's search
    models["dense (m3lit search)"] = M3MTEBModel(embedder, "dense", max_length=MAX_LENGTH, name="dense-search")
    # m3lit's non-exhaustive hybrid protocol: the union of each head's top 5 re-ranked
    models["all@5"] = M3MTEBModel(embedder, "all", max_length=MAX_LENGTH, candidate_depth=5)
    expected = dict(m3lit_ndcg)
    expected["dense (m3lit search)"] = m3lit_ndcg["dense"]
    expected["all@5"] = evaluate_beir(embedder, str(beir_dir), metrics=("ndcg@10",), max_length=MAX_LENGTH,
                                      query_max_length=MAX_LENGTH, candidate_depth=5)["tinybeir"]["all"]["ndcg@10"]
    got = {mode: mteb_scores(model, task, tmp_path / "mteb")["ndcg_at_10"] for mode, model in models.items()}
    print("\nmode: MTEB ndcg_at_10 / m3lit ndcg@10\n" + "\n".join(f"{m}: {got[m]:.5f} / {expected[m]:.6f}"
                                                                  for m in got))
    for mode, value in got.items():
        assert value == pytest.approx(expected[mode], abs=1e-5), mode  # MTEB rounds to 5 decimals
    assert len({round(v, 5) for v in got.values()}) > 2, got  # the modes rank differently
    written = list((tmp_path / "mteb" / "results").rglob("M3LitTinyBEIR.json"))
    assert len(written) == len(models)


def test_search_on_given_candidates_matches_full_search(embedder, beir_dir):
    """Reranking input (``top_ranked``): every document as candidate gives the full search's ranking."""
    task = local_retrieval_task(beir_dir)
    task.load_data()
    split = task.dataset["default"]["test"]
    model = M3MTEBModel(embedder, "all", max_length=MAX_LENGTH)
    kwargs = {"task_metadata": task.metadata, "hf_split": "test", "hf_subset": "default", "encode_kwargs": {}}
    model.index(split["corpus"], **kwargs)
    full = model.search(split["queries"], top_k=1000, **kwargs)
    everything = {q: list(split["corpus"]["id"]) for q in split["queries"]["id"]}
    reranked = model.search(split["queries"], top_k=1000, top_ranked=everything, **kwargs)
    assert full.keys() == reranked.keys()
    for q in full:
        assert list(full[q]) == list(reranked[q])
        np.testing.assert_allclose(list(full[q].values()), list(reranked[q].values()), rtol=1e-5, atol=1e-6)


def test_mteb_on_the_embedded_default_split(embedder, tmp_path):
    """The embedded default's BEIR split (English: 300 documents, 50 queries) as an MTEB task: MTEB's figures for
    the dense head and the hybrid of all heads equal m3lit-eval's."""
    folder = os.path.join(default_assets_path("dev_dir"), "en")
    task = local_retrieval_task(folder, name="M3LitEmbeddedEn")
    models = m3lit_mteb_models(embedder, modes=["dense", "all"], max_length=MAX_LENGTH, candidate_depth=100)
    got = {mode: mteb_scores(model, task, tmp_path / "mteb")["ndcg_at_10"] for mode, model in models.items()}
    ours = evaluate_beir(embedder, folder, metrics=("ndcg@10",), max_length=MAX_LENGTH, query_max_length=MAX_LENGTH,
                         candidate_depth=100)["en"]
    print("\nembedded default en, MTEB / m3lit: " + ", ".join(f"{m} {got[m]:.5f} / {ours[m]['ndcg@10']:.5f}"
                                                               for m in got))
    for mode in got:
        assert got[mode] == pytest.approx(ours[mode]["ndcg@10"], abs=1e-5), mode
