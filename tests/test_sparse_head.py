"""The sparse head's scores equal the naive (B, L, vocab) formulation, in value and gradient."""
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
