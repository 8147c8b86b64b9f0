import json
import os
import zlib

import numpy as np
import pytest

from m3lit.eval import RetrievalSettings, evaluate_beir, evaluate_ranked, format_results, load_beir

VOCAB = ["apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "olive", "peach", "pear", "plum",
         "kiwi", "lime", "fig", "date", "nut"]


class FakeTokenizer:
    """Word-level: ids 3.. for words, CLS=0 and EOS=2 around them."""

    def __init__(self, words):
        self.ids = {w: i + 3 for i, w in enumerate(words)}

    def __len__(self):
        return len(self.ids) + 3

    def words(self, text):
        return [w for w in text.split() if w in self.ids]

    def __call__(self, texts, add_special_tokens=True, truncation=False, verbose=False):
        return {"input_ids": [[0] + [self.ids[w] for w in self.words(t)] + [2] for t in texts]}


class FakeEncoder:
    """Deterministic M3-like encoder: random word vectors; dense = normalised mean, sparse = per-word weight,
    colbert = normalised word vectors (+ an EOS vector)."""

    def __init__(self, dim=12, with_tokenizer=True):
        rng = np.random.default_rng(1)
        self.vectors = {w: rng.standard_normal(dim) for w in VOCAB + ["</s>"]}
        self.weights = {w: 0.1 + (zlib.crc32(w.encode()) % 100) / 100 for w in VOCAB}
        self.tok = FakeTokenizer(VOCAB)
        if with_tokenizer:
            self.tokenizer = self.tok
        self.calls = []

    def encode(self, texts, batch_size=32, max_length=512, return_dense=True, return_sparse=True,
               return_colbert=True, **kwargs):
        self.calls.append((len(texts), max_length, kwargs, list(texts)))
        words = [self.tok.words(t)[: max_length - 2] for t in texts]
        out = {}
        if return_dense:
            dense = np.stack([np.sum([self.vectors[w] for w in ws] or [self.vectors["</s>"]], axis=0) for ws in words])
            out["dense"] = (dense / np.linalg.norm(dense, axis=1, keepdims=True)).astype(np.float32)
        if return_sparse:
            out["sparse"] = [{self.tok.ids[w]: self.weights[w] for w in ws} for ws in words]
        if return_colbert:
            cols = []
            for ws in words:
                m = np.stack([self.vectors[w] for w in ws + ["</s>"]])
                cols.append((m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32))
            out["colbert"] = cols
        return out


def make_dataset(folder, seed=0, n_docs=40, n_queries=12):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
    docs = {f"d{i}": " ".join(rng.choice(VOCAB, rng.integers(2, 30))) for i in range(n_docs)}
    with open(os.path.join(folder, "corpus.jsonl"), "w") as f:
        for did, text in docs.items():
            f.write(json.dumps({"_id": did, "title": "", "text": text}) + "\n")
    with open(os.path.join(folder, "queries.jsonl"), "w") as f, \
            open(os.path.join(folder, "qrels", "test.tsv"), "w") as g:
        g.write("query-id\tcorpus-id\tscore\n")
        for q in range(n_queries):
            target = f"d{rng.integers(n_docs)}"
            words = docs[target].split()
            f.write(json.dumps({"_id": f"q{q}", "text": " ".join(rng.choice(words, 3))}) + "\n")
            g.write(f"q{q}\t{target}\t2\n")
            other = f"d{rng.integers(n_docs)}"
            if other != target:
                g.write(f"q{q}\t{other}\t{rng.integers(0, 2)}\n")
    return folder


def brute_scores(enc, dataset, head, max_length=512):
    docs = enc.encode(list(dataset.corpus.values()), max_length=max_length)
    queries = enc.encode(list(dataset.queries.values()))
    if head == "dense":
        return queries["dense"] @ docs["dense"].T
    if head == "sparse":
        return np.array([[sum(w * d.get(t, 0.0) for t, w in q.items()) for d in docs["sparse"]]
                         for q in queries["sparse"]])
    h16 = [c.astype(np.float16).astype(np.float64) for c in docs["colbert"]]
    return np.array([[float((q.astype(np.float16).astype(np.float64) @ d.T).max(1).sum() / len(q)) for d in h16]
                     for q in queries["colbert"]])


def ranked_from_scores(dataset, scores, k=100, keep=None):
    doc_ids, out = list(dataset.corpus), {}
    for i, qid in enumerate(dataset.queries):
        cand = [j for j in range(len(doc_ids)) if keep is None or keep(i, j)]
        cand.sort(key=lambda j: (-scores[i, j], j))
        out[qid] = [doc_ids[j] for j in cand[:k]]
    return out


@pytest.fixture(scope="module")
def beir_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir")
    make_dataset(str(root / "xx"), seed=0)
    make_dataset(str(root / "yy"), seed=1, n_docs=25)
    return str(root)


def test_results_equal_brute_force(beir_root):
    enc = FakeEncoder()
    results = evaluate_beir(enc, beir_root, candidate_depth=5)
    assert list(results) == ["xx", "yy", "average"]
    for name in ("xx", "yy"):
        ds = load_beir(os.path.join(beir_root, name), name=name)
        scores = {h: brute_scores(enc, ds, h) for h in ("dense", "sparse", "colbert")}
        expected = {
            "dense": ranked_from_scores(ds, scores["dense"]),
            "sparse": ranked_from_scores(ds, scores["sparse"], keep=lambda i, j: scores["sparse"][i, j] > 0),
            "colbert": ranked_from_scores(ds, scores["colbert"]),
        }
        # hybrids: union of each mode's top 5, re-ranked by the weighted sum
        doc_index = {d: j for j, d in enumerate(ds.corpus)}
        for name_h, weights in {"dense+sparse": {"dense": 1, "sparse": 0.3},
                                "all": {"dense": 1, "sparse": 0.3, "colbert": 1}}.items():
            total = sum(w * scores[h] for h, w in weights.items())
            union = {i: {doc_index[d] for h in weights for d in expected[h][qid][:5]}
                     for i, qid in enumerate(ds.queries)}
            expected[name_h] = ranked_from_scores(ds, total, keep=lambda i, j, u=union: j in u[i])
        for mode, ranked in expected.items():
            want = evaluate_ranked(ranked, ds.qrels)
            for metric, value in want.items():
                assert results[name][mode][metric] == pytest.approx(value, abs=1e-6), (name, mode, metric)
    for mode in ("dense", "sparse", "colbert", "dense+sparse", "all"):
        assert results["average"][mode]["ndcg@10"] == pytest.approx(
            (results["xx"][mode]["ndcg@10"] + results["yy"][mode]["ndcg@10"]) / 2)
    json.dumps(results)  # plain JSON types only


def test_colbert_rerank_equals_exhaustive_when_depth_covers_corpus(beir_root):
    enc = FakeEncoder()
    path = os.path.join(beir_root, "xx")
    exhaustive = evaluate_beir(enc, path, heads=["colbert"])
    reranked = evaluate_beir(enc, path, heads=["colbert"], colbert_exhaustive_max_docs=0, colbert_rerank_depth=100)
    assert reranked["xx"]["stats"]["colbert_search"] == "rerank_dense@100"
    assert exhaustive["xx"]["stats"]["colbert_search"] == "exhaustive"
    assert list(reranked["xx"]) == ["colbert", "stats"]  # dense was encoded only for candidates
    for metric, value in exhaustive["xx"]["colbert"].items():
        assert reranked["xx"]["colbert"][metric] == pytest.approx(value, abs=1e-6)


def test_token_budget_batching_and_truncation(beir_root):
    enc = FakeEncoder()
    results = evaluate_beir(enc, os.path.join(beir_root, "xx"), heads=["dense"], max_length=12, max_tokens=64,
                            batch_size=5)
    ds = load_beir(os.path.join(beir_root, "xx"))
    lengths = [len(enc.tok.words(t)) + 2 for t in ds.corpus.values()]
    stats = results["xx"]["stats"]
    assert stats["truncated_passages"] == sum(n > 12 for n in lengths)
    assert stats["truncated_passages"] > 0
    assert list(results["xx"]) == ["dense", "stats"]  # no hybrid without its heads
    corpus_calls = [c for c in enc.calls if c[1] == 12]
    assert sum(c[0] for c in corpus_calls) == len(ds.corpus)
    assert all(c[0] <= 5 for c in corpus_calls)
    for rows, _, _, texts in corpus_calls:  # rows × (longest, capped and padded to a multiple of 8) ≤ budget
        longest = min(max(len(enc.tok.words(t)) + 2 for t in texts), 12)
        assert rows == 1 or rows * (-(-longest // 8) * 8) <= 64
    assert len({c[0] for c in corpus_calls}) > 1  # batch sizes follow the lengths
    assert "truncated to max_length" in format_results(results)


def test_encoder_without_tokenizer_and_mcls_flag(beir_root):
    enc = FakeEncoder(with_tokenizer=False)
    results = evaluate_beir(enc, os.path.join(beir_root, "yy"), heads=["dense", "sparse"], mcls=True,
                            batch_size=7)
    assert results["yy"]["stats"]["truncated_passages"] is None
    assert set(results["yy"]) == {"dense", "sparse", "dense+sparse", "stats"}
    corpus_calls = [c for c in enc.calls if c[2]]
    assert corpus_calls and all(c[2] == {"mcls": True, "mcls_interval": 256} for c in corpus_calls)

    class Plain:  # encode without an mcls option, no model to build MCLS inputs from
        def encode(self, texts, batch_size, max_length, return_dense, return_sparse, return_colbert):
            return enc.encode(texts, max_length=max_length)

    with pytest.raises(ValueError, match="no `mcls` option"):
        evaluate_beir(Plain(), os.path.join(beir_root, "yy"), mcls=True)


def test_custom_hybrid_weights_and_validation(beir_root):
    enc = FakeEncoder()
    path = os.path.join(beir_root, "yy")
    got = evaluate_beir(enc, path, heads=["dense", "sparse"], hybrids={"d+s": {"dense": 1.0, "sparse": 0.0}})
    assert got["yy"]["d+s"] == pytest.approx(got["yy"]["dense"])  # zero sparse weight = dense ranking
    with pytest.raises(ValueError, match="not in heads"):
        RetrievalSettings(heads=("dense",), hybrids={"all": {"dense": 1, "colbert": 1}})
    with pytest.raises(TypeError, match="unknown option"):
        evaluate_beir(enc, path, max_len=3)


def test_texts_shared_between_datasets_are_encoded_once(tmp_path):
    make_dataset(str(tmp_path / "one"), seed=7)
    make_dataset(str(tmp_path / "two"), seed=7)  # same corpus and queries
    make_dataset(str(tmp_path / "three"), seed=8)
    enc = FakeEncoder()
    together = evaluate_beir(enc, str(tmp_path))
    encoded = sum(c[0] for c in enc.calls)
    sizes = {n: (together[n]["stats"]["corpus"], together[n]["stats"]["queries"]) for n in ("one", "three")}
    one = load_beir(str(tmp_path / "one"))
    unique_one = len(set(one.corpus.values())) + len(set(one.queries.values()))
    assert encoded <= unique_one + sum(sizes["three"])  # "two" came from the cache
    for name in ("one", "two", "three"):
        alone = evaluate_beir(FakeEncoder(), str(tmp_path / name))
        for mode, metrics in alone[name].items():
            if mode != "stats":
                assert together[name][mode] == pytest.approx(metrics, abs=1e-9)
