"""maxsim_scores: ColBERT scores with the values and gradients of colbert_scores, without per-pair memory."""
import pytest
import torch

from m3lit.model.maxsim import maxsim_scores
from m3lit.model.scores import colbert_scores


def inputs(seed, bq=3, lq=5, bp=7, lp=6, d=4):
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(bq, lq, d, generator=gen), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(bp, lp, d, generator=gen), dim=-1)
    q_mask = (torch.arange(lq)[None] < torch.randint(1, lq + 1, (bq,), generator=gen)[:, None]).long()
    p_mask = (torch.arange(lp)[None] < torch.randint(1, lp + 1, (bp,), generator=gen)[:, None]).long()
    return q, q_mask, p * p_mask[..., None], p_mask


@pytest.mark.parametrize("max_elements", [1, 40, 2**24])  # one passage per chunk, a few, all at once
def test_values_and_gradients_equal_colbert_scores(max_elements):
    q, q_mask, p, p_mask = inputs(0)
    weights = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    q1, p1 = q.clone().requires_grad_(), p.clone().requires_grad_()
    ref = colbert_scores(q1, q_mask, p1, p_mask)
    (ref * weights).sum().backward()
    q2, p2 = q.clone().requires_grad_(), p.clone().requires_grad_()
    got = maxsim_scores(q2, q_mask, p2, p_mask, max_elements=max_elements)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(q2.grad, q1.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(p2.grad, p1.grad, atol=1e-6, rtol=0)


def test_gradcheck_double():
    q, q_mask, p, p_mask = (t.double() if t.is_floating_point() else t for t in inputs(2, 2, 3, 3, 4, 3))
    q.requires_grad_()
    p.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: maxsim_scores(a, q_mask, b, p_mask, max_elements=20), (q, p))


def test_keeps_no_per_pair_tensor_for_backward():
    q, q_mask, p, p_mask = inputs(3, bq=16, lq=8, bp=32, lp=8, d=4)
    q.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        maxsim_scores(q, q_mask, p, p_mask)
    assert max(saved) <= q.numel() + p.numel()  # inputs only; colbert_scores keeps 16 × 8 × 32 argmax indices


def test_padding_costs_no_similarities(monkeypatch):
    """Passages of uneven lengths in any order: chunks of similar length, each cut to its longest passage, with the
    values and gradients of colbert_scores."""
    import m3lit.model.maxsim as maxsim

    q, q_mask, p, p_mask = inputs(4, bq=2, lq=3, bp=6, lp=9, d=4)
    lengths = [2, 9, 1, 5, 9, 3]
    p_mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    p = p * p_mask[..., None]
    shapes = []
    best = maxsim._best
    monkeypatch.setattr(maxsim, "_best", lambda q, pc, mc: shapes.append(tuple(pc.shape[:2])) or best(q, pc, mc))
    budget = 2 * 3 * 9 * 2  # two passages of the longest length per chunk
    p1 = p.clone().requires_grad_()
    got = maxsim_scores(q, q_mask, p1, p_mask, max_elements=budget)
    got.sum().backward()
    # longest first (9, 9 | 5, 3 | 2 | 1): at most two passages of 9 per chunk (the budget), a chunk padded at most
    # 25 % over its passages' tokens, each cut to its longest: 31 passage tokens instead of 6 × 9; the backward pass
    # recomputes the same chunks
    assert shapes == [(2, 9), (2, 5), (1, 2), (1, 1)] * 2
    ref_p = p.clone().requires_grad_()
    ref = colbert_scores(q, q_mask, ref_p, p_mask)
    ref.sum().backward()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(p1.grad, ref_p.grad, atol=1e-6, rtol=0)
