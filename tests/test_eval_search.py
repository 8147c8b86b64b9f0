import numpy as np
import pytest

from m3lit.eval.corpus_encoding import ColbertStore, EncodedTexts, sparse_rows_to_csr, token_budget_batches
from m3lit.eval.hybrid import hybrid_search, hybrids_from_names, union_candidates
from m3lit.eval.search import candidates_scores, colbert_search, dense_search, rerank, sort_ranking, sparse_search


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_colbert(rng, n, lo, hi, dim=8):
    return [unit(rng.standard_normal((rng.integers(lo, hi + 1), dim))) for _ in range(n)]


def random_sparse(rng, n, vocab=40, max_terms=6):
    rows = []
    for _ in range(n):
        ids = rng.choice(vocab, size=rng.integers(0, max_terms + 1), replace=False)
        rows.append({int(t): float(rng.uniform(0.05, 1.0)) for t in ids})
    return rows


def brute_colbert(q, p):
    q = q.astype(np.float16).astype(np.float64)
    p = p.astype(np.float16).astype(np.float64)
    if len(p) == 0:
        return 0.0
    return float((q @ p.T).max(axis=1).sum() / max(len(q), 1))


def brute_sparse(a, b):
    return sum(w * b[t] for t, w in a.items() if t in b)


def expected_top(scores, k, valid=None):
    """Indices by decreasing score, ties by index; only entries where valid."""
    out = []
    for i, row in enumerate(scores):
        cand = [j for j in range(len(row)) if valid is None or valid[i][j]]
        cand.sort(key=lambda j: (-row[j], j))
        out.append(cand[:k])
    return out


def as_lists(ranking):
    return [[int(j) for j in row if j >= 0] for row in ranking.indices]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_dense_search_is_exact_across_chunks(rng, backend):
    q, d = unit(rng.standard_normal((13, 16))), unit(rng.standard_normal((101, 16)))
    got = dense_search(q, d, k=7, doc_chunk=10, query_chunk=4, backend=backend)
    assert as_lists(got) == expected_top(q @ d.T, 7)
    np.testing.assert_allclose(got.scores, np.sort(q @ d.T, axis=1)[:, ::-1][:, :7], atol=1e-6)


def test_dense_search_k_larger_than_corpus(rng):
    q, d = unit(rng.standard_normal((3, 4))), unit(rng.standard_normal((5, 4)))
    got = dense_search(q, d, k=10, doc_chunk=2)
    assert got.indices.shape == (3, 5)
    assert as_lists(got) == expected_top(q @ d.T, 10)


def test_sparse_search_matches_definition_and_skips_non_matching(rng):
    qs, ds = random_sparse(rng, 9), random_sparse(rng, 60)
    qs[0] = {}  # a query with no weights retrieves nothing
    scores = np.array([[brute_sparse(a, b) for b in ds] for a in qs])
    got = sparse_search(sparse_rows_to_csr(qs), sparse_rows_to_csr(ds, width=55), k=5, query_chunk=4)
    assert as_lists(got) == expected_top(scores, 5, valid=scores > 0)
    assert as_lists(got)[0] == []
    for i, row in enumerate(as_lists(got)):
        np.testing.assert_allclose(got.scores[i, :len(row)], scores[i, row], rtol=1e-6)


def test_colbert_exhaustive_matches_maxsim(rng):
    qv, dv = random_colbert(rng, 7, 1, 5), random_colbert(rng, 40, 1, 12)
    dv[3] = np.zeros((0, 8), np.float32)  # an empty document scores 0
    scores = np.array([[brute_colbert(a, b) for b in dv] for a in qv])
    qs, ds = ColbertStore.from_list(qv), ColbertStore.from_list(dv, dim=8)
    got = colbert_search(qs, ds, k=6, doc_tokens_per_chunk=20, query_tokens_per_chunk=7)
    assert as_lists(got) == expected_top(scores, 6)
    np.testing.assert_allclose(got.scores, np.sort(scores, axis=1)[:, ::-1][:, :6], atol=1e-5)
    np.testing.assert_allclose(got.table, scores, atol=1e-5)  # full matrix kept for the hybrids
    assert colbert_search(qs, ds, k=6, keep_table=False).table is None
    # hybrids look the table up: same scores as computing the candidates
    queries, docs = EncodedTexts(7, colbert=qs), EncodedTexts(40, colbert=ds)
    cands = np.argsort(-scores, axis=1)[:, :9]
    np.testing.assert_allclose(candidates_scores("colbert", queries, docs, cands, table=got.table),
                               candidates_scores("colbert", queries, docs, cands), atol=1e-5)


def test_candidate_scores_and_rerank(rng):
    n_q, n_d = 5, 30
    qd, dd = unit(rng.standard_normal((n_q, 8))), unit(rng.standard_normal((n_d, 8)))
    qsp, dsp = random_sparse(rng, n_q), random_sparse(rng, n_d)
    qcv, dcv = random_colbert(rng, n_q, 1, 4), random_colbert(rng, n_d, 1, 9)
    queries = EncodedTexts(n_q, qd, sparse_rows_to_csr(qsp), ColbertStore.from_list(qcv))
    docs = EncodedTexts(n_d, dd, sparse_rows_to_csr(dsp), ColbertStore.from_list(dcv))
    cands = np.array([rng.choice(n_d, 6, replace=False) for _ in range(n_q)])
    cands[1, 4:] = -1
    truth = {
        "dense": lambda i, j: float(qd[i] @ dd[j]),
        "sparse": lambda i, j: brute_sparse(qsp[i], dsp[j]),
        "colbert": lambda i, j: brute_colbert(qcv[i], dcv[j]),
    }
    for head, fn in truth.items():
        got = candidates_scores(head, queries, docs, cands)
        for i in range(n_q):
            for c, j in enumerate(cands[i]):
                if j < 0:
                    assert got[i, c] == -np.inf
                else:
                    assert got[i, c] == pytest.approx(fn(i, j), abs=1e-5), head
    ranked = rerank("colbert", queries, docs, cands, k=3)
    for i in range(n_q):
        valid = [j for j in cands[i] if j >= 0]
        assert as_lists(ranked)[i] == sorted(valid, key=lambda j: (-truth["colbert"](i, j), j))[:3]


def test_hybrid_reranks_union_by_weighted_sum(rng):
    n_q, n_d = 6, 50
    qd, dd = unit(rng.standard_normal((n_q, 8))), unit(rng.standard_normal((n_d, 8)))
    qsp, dsp = random_sparse(rng, n_q), random_sparse(rng, n_d)
    queries = EncodedTexts(n_q, qd, sparse_rows_to_csr(qsp))
    docs = EncodedTexts(n_d, dd, sparse_rows_to_csr(dsp))
    dense = dense_search(qd, dd, k=5)
    sparse = sparse_search(queries.sparse, docs.sparse, k=5)
    got = hybrid_search({"dense": dense, "sparse": sparse}, {"dense": 1.0, "sparse": 0.3}, queries, docs, k=4,
                        candidate_depth=5)
    for i in range(n_q):
        union = set(as_lists(dense)[i]) | set(as_lists(sparse)[i])
        total = {j: float(qd[i] @ dd[j]) + 0.3 * brute_sparse(qsp[i], dsp[j]) for j in union}
        assert as_lists(got)[i] == sorted(union, key=lambda j: (-total[j], j))[:4]
        np.testing.assert_allclose(got.scores[i, :4], [total[j] for j in as_lists(got)[i]], atol=1e-5)


def test_union_candidates_deduplicates():
    a = sort_ranking(np.array([[3, 1, -1]]), np.array([[0.9, 0.5, 0.0]]))
    b = sort_ranking(np.array([[1, 7, 3]]), np.array([[0.8, 0.7, 0.1]]))
    assert sorted(union_candidates([a, b], 3)[0].tolist()) == [1, 3, 7]


def test_sort_ranking_breaks_ties_by_index():
    r = sort_ranking(np.array([[5, 2, 9, -1]]), np.array([[1.0, 1.0, 2.0, 3.0]]))
    assert r.indices.tolist() == [[9, 2, 5, -1]]
    assert r.scores[0, -1] == -np.inf


def test_hybrids_from_names():
    assert hybrids_from_names(["dense+sparse", "all"], {"sparse": 0.5}) == {
        "dense+sparse": {"dense": 1.0, "sparse": 0.5}, "all": {"dense": 1.0, "sparse": 0.5, "colbert": 1.0}}
    with pytest.raises(ValueError, match="hybrid 'dense'"):
        hybrids_from_names(["dense"])


def test_token_budget_batches_sorted_and_bounded():
    lengths = np.array([5, 300, 40, 8, 120, 7, 64])
    batches = token_budget_batches(lengths, max_tokens=256, batch_size=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert lengths[flat].tolist() == sorted(lengths.tolist(), reverse=True)
    for b in batches:
        padded = -(-int(lengths[b].max()) // 8) * 8
        assert len(b) <= 3 and (len(b) == 1 or len(b) * padded <= 256)
