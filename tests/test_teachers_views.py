"""teacher=views: token-drop / mask views reproducible from the seed and independent of batch position, dropout
views that differ, targets and the symmetric loss equal hand-computed references (DDP: test_scale_cross_device)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import random_batch, tiny_module  # noqa: E402

from m3lit.loss import M3Loss, ViewsTeacher, soft_cross_entropy  # noqa: E402
from m3lit.loss.views import augment  # noqa: E402

SPECIAL, PAD, MASK = (0, 2), 1, 3


def rows():
    ids = torch.tensor([[0, 11, 12, 13, 14, 15, 2, 1, 1], [0, 21, 22, 2, 1, 1, 1, 1, 1], [0] + list(range(30, 37)) + [2]])
    return ids, (ids != PAD).long()


def test_token_drop_keeps_specials_and_order_and_is_reproducible_and_position_free():
    ids, mask = rows()
    out_ids, out_mask = augment(ids, mask, "token_drop", 0.5, SPECIAL, PAD, MASK, seed=1, step=3)
    for r in range(3):
        kept = out_ids[r][out_mask[r].bool()].tolist()
        original = ids[r][mask[r].bool()].tolist()
        assert kept[0] == 0 and kept[-1] == 2 and len(kept) < len(original) or len(original) <= 4
        assert [t for t in original if t in kept] == kept  # a subsequence, in order
        assert all(t == PAD for t in out_ids[r][~out_mask[r].bool()].tolist())
    assert out_mask.sum(1).max() == out_ids.shape[1]  # trimmed to the longest row
    again = augment(ids, mask, "token_drop", 0.5, SPECIAL, PAD, MASK, seed=1, step=3)
    assert torch.equal(again[0], out_ids) and torch.equal(again[1], out_mask)
    other = augment(ids, mask, "token_drop", 0.5, SPECIAL, PAD, MASK, seed=1, step=4)[0]
    assert not torch.equal(other, out_ids)  # another step, other choices
    # a row's view does not depend on its place in the batch (or on which rank holds it)
    alone = augment(ids[2:], mask[2:], "token_drop", 0.5, SPECIAL, PAD, MASK, seed=1, step=3)
    assert alone[0][0].tolist()[:int(alone[1][0].sum())] == out_ids[2].tolist()[:int(out_mask[2].sum())]
    # nor on its padding: row 1 padded to 12 instead of 9 tokens gets the same view
    padded = torch.cat([ids[1:2], torch.full((1, 3), PAD)], dim=1)
    view = augment(padded, (padded != PAD).long(), "token_drop", 0.5, SPECIAL, PAD, MASK, seed=1, step=3)
    assert view[0][0].tolist()[:int(view[1][0].sum())] == out_ids[1].tolist()[:int(out_mask[1].sum())]


def test_drop_and_mask_rates_and_mask_token():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (200, 50), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    masked, same_mask = augment(ids, mask, "mask", 0.2, SPECIAL, PAD, MASK, seed=0, step=0)
    hit = masked != ids
    assert torch.equal(same_mask, mask) and torch.all(masked[hit] == MASK)
    assert not hit[:, 0].any() and not hit[:, -1].any()
    assert hit.float().mean().item() == pytest.approx(0.2 * 48 / 50, abs=0.01)
    dropped = augment(ids, mask, "token_drop", 0.2, SPECIAL, PAD, MASK, seed=0, step=0)[1]
    assert 1 - dropped.sum().item() / mask.sum().item() == pytest.approx(0.2 * 48 / 50, abs=0.01)
    with pytest.raises(ValueError, match="no mask token"):
        augment(ids, mask, "mask", 0.2, SPECIAL, PAD, None, seed=0, step=0)


def test_views_targets_and_symmetric_loss_equal_their_definitions():
    g = torch.Generator().manual_seed(0)
    first = {h: torch.randn(3, 6, generator=g) * 0.05 for h in ("dense", "sparse", "colbert")}
    second = {h: (torch.randn(3, 6, generator=g) * 0.05).requires_grad_() for h in first}
    pos = torch.arange(3) * 2
    s1 = {h: v / 0.02 for h, v in first.items()}
    s2 = {h: v.detach() / 0.02 for h, v in second.items()}
    lam = {"dense": 1.0, "sparse": 0.1, "colbert": 1.0}

    def ens(s):
        return s["dense"] + 0.3 * s["sparse"] + s["colbert"]

    one_way = M3Loss(teacher=ViewsTeacher(direction="one_way"))(first, pos, 2, sources={"views": second})
    p2 = torch.softmax(ens(s2), -1)
    forward = sum(lam[h] * soft_cross_entropy(p2, s1[h]) for h in s1) / 3
    torch.testing.assert_close(one_way.distill, forward)
    symmetric = M3Loss(teacher=ViewsTeacher())(first, pos, 2, sources={"views": second})
    p1 = torch.softmax(ens(s1), -1)
    backward = sum(lam[h] * soft_cross_entropy(p1, s2[h]) for h in s2) / 3
    torch.testing.assert_close(symmetric.distill, (forward + backward) / 2)
    symmetric.loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in second.values())  # the second view learns


def test_a_second_dropout_pass_differs_and_token_drop_is_the_same_on_every_call():
    batch = random_batch(seed=3)
    module = tiny_module(dropout=0.1, views={"view": "dropout", "direction": "one_way"}).train()
    first, _, _ = module.compute_scores(module.encode(batch["queries"]), module.encode(batch["passages"]), False)
    second = module.view_scores(batch, False)
    assert all(not torch.allclose(first[h], second[h]) for h in first)
    assert all(not v.requires_grad for v in second.values())  # one way: no gradient through the second view
    drop = tiny_module(views={"view": "token_drop", "rate": 0.3}).train()  # no dropout: the view is the tokens
    a, b = drop.view_scores(batch, False), drop.view_scores(batch, False)
    assert all(torch.equal(a[h], b[h]) and a[h].requires_grad for h in a)
    plain, _, _ = drop.compute_scores(drop.encode(batch["queries"]), drop.encode(batch["passages"]), False)
    assert not torch.allclose(plain["sparse"], a["sparse"])  # (the untrained dense CLS scores are all ~1)


def test_translation_view_scores_the_batch_views_and_a_batch_without_them_scores_itself():
    """view=translation: the second view is the collated ``views`` (no augmentation); without it, the same texts."""
    batch, other = random_batch(seed=3), random_batch(seed=4)
    module = tiny_module(views={"view": "translation", "direction": "one_way"}).eval()  # no dropout: deterministic
    translated = {**batch, "views": {"queries": other["queries"], "passages": other["passages"]}}
    second = module.view_scores(translated, False)
    reference, _, _ = module.compute_scores(module.encode(other["queries"]), module.encode(other["passages"]), False)
    first, _, _ = module.compute_scores(module.encode(batch["queries"]), module.encode(batch["passages"]), False)
    assert all(torch.equal(second[h], reference[h]) for h in reference)
    assert not torch.allclose(second["sparse"], first["sparse"])
    untranslated = module.view_scores(batch, False)
    assert all(torch.equal(untranslated[h], first[h]) for h in first)
    with pytest.raises(ValueError, match="view=translation: the second view is the batch's `views`"):
        augment(*rows(), "translation", 0.1, SPECIAL, PAD, MASK, seed=0, step=0)
