"""Losses and teacher aggregators: hand-computed values and the documented behaviour of each option."""
import pytest
import torch
import torch.nn.functional as F

from m3lit.loss import (
    ExternalTeacher,
    LearnedTeacher,
    M3Loss,
    MixedTeacher,
    UniformTeacher,
    WeightedTeacher,
    infonce,
    m3_kd_loss,
    passage_to_query_infonce,
    soft_cross_entropy,
)

B, G = 3, 2


def rows(seed=0, heads=("dense", "sparse", "colbert")):
    g = torch.Generator().manual_seed(seed)
    return {h: torch.randn(B, B * G, generator=g) * 0.05 for h in heads}


POS = torch.arange(B) * G


def test_weighted_teacher_is_the_m3_formula():
    scores = rows()
    loss = M3Loss(self_distill=True)
    out = loss(scores, POS, G)
    s = {h: v / 0.02 for h, v in scores.items()}
    s_e = s["dense"] + 0.3 * s["sparse"] + s["colbert"]
    ce = {h: F.cross_entropy(v, POS) for h, v in s.items()}
    hard = (ce["dense"] + F.cross_entropy(s_e, POS) + 0.1 * ce["sparse"] + ce["colbert"]) / 4
    p = torch.softmax(s_e, -1)
    distill = sum(w * soft_cross_entropy(p, s[h]) for h, w in (("dense", 1), ("sparse", 0.1), ("colbert", 1))) / 3
    torch.testing.assert_close(out.loss, (hard + distill) / 2)
    torch.testing.assert_close(out.distill, distill)


def test_self_distill_start_step():
    loss = M3Loss(self_distill=True, self_distill_start_step=5)
    assert loss(rows(), POS, G, step=4).distill is None
    assert loss(rows(), POS, G, step=5).distill is not None


def test_uniform_and_dense_only_teachers():
    scores = {h: v / 0.02 for h, v in rows().items()}
    torch.testing.assert_close(UniformTeacher().ensemble(scores), sum(scores.values()))
    dense_only = WeightedTeacher({"sparse": 0.0, "colbert": 0.0})
    torch.testing.assert_close(dense_only.targets(dense_only.ensemble(scores), None),
                               torch.softmax(scores["dense"], -1))


def test_learned_teacher_weights_are_trained_keep_their_sum_and_learn_a_temperature():
    teacher = LearnedTeacher()
    assert teacher.weights() == pytest.approx({"dense": 1.0, "sparse": 0.3, "colbert": 1.0}, rel=1e-5)
    assert teacher.temperature() == pytest.approx(1.0)
    loss = M3Loss(teacher=teacher)
    out = loss({h: v.requires_grad_() for h, v in rows().items()}, POS, G)
    out.loss.backward()
    assert teacher.raw.grad is not None and teacher.raw.grad.abs().sum() > 0
    assert teacher.raw_temperature.grad is not None and teacher.raw_temperature.grad != 0
    with torch.no_grad():
        teacher.raw -= 10 * teacher.raw.grad
        teacher.raw_temperature -= 10 * teacher.raw_temperature.grad
    assert teacher.weights() != pytest.approx({"dense": 1.0, "sparse": 0.3, "colbert": 1.0}, rel=1e-3)
    assert sum(teacher.weights().values()) == pytest.approx(2.3)  # normalised: the mix changes, not the scale
    assert teacher.temperature() != pytest.approx(1.0)
    # s_e = Σ_h w_h s_h / t
    s = {h: v / 0.02 for h, v in rows().items()}
    w, t = teacher.weights(), teacher.temperature()
    torch.testing.assert_close(teacher.ensemble(s), sum(w[h] * s[h] for h in s) / t)
    fixed = LearnedTeacher(learn_temperature=False)
    assert not fixed.raw_temperature.requires_grad and fixed.temperature() == pytest.approx(1.0)


def test_data_scores_are_used_only_by_a_teacher_that_chooses_them():
    ext_scores = torch.tensor([[3.0, 1.0], [2.5, 0.5], [2.0, 1.5]])
    for teacher in (WeightedTeacher(), UniformTeacher(), LearnedTeacher()):
        loss = M3Loss(teacher=teacher)
        torch.testing.assert_close(loss(rows(), POS, G, teacher_scores=ext_scores).loss, loss(rows(), POS, G).loss)
    # FlagEmbedding's knowledge_distillation: hard-label terms against the data scores, self targets kept
    loss = M3Loss(teacher=WeightedTeacher(use_data_scores=True))
    out = loss(rows(), POS, G, teacher_scores=ext_scores)
    s = {h: v / 0.02 for h, v in rows().items()}
    p_ext = torch.softmax(ext_scores, -1)
    kd = {h: m3_kd_loss(p_ext, v, POS) for h, v in s.items()}
    s_e = s["dense"] + 0.3 * s["sparse"] + s["colbert"]
    hard = (kd["dense"] + 0.1 * kd["sparse"] + kd["colbert"] + m3_kd_loss(p_ext, s_e, POS)) / 4
    torch.testing.assert_close(out.hard, hard)
    p = torch.softmax(s_e, -1)
    torch.testing.assert_close(out.distill, sum(w * soft_cross_entropy(p, s[h]) for h, w in
                                                (("dense", 1), ("sparse", 0.1), ("colbert", 1))) / 3)
    with pytest.raises(ValueError, match="contradicts"):
        ExternalTeacher(use_data_scores=False)


def test_separate_weights_of_the_hard_and_distillation_terms():
    base = M3Loss()(rows(), POS, G)
    out = M3Loss(hard_weight=0.2, distill_weight=1.5, distill_head_weights={"sparse": 1.0})(rows(), POS, G)
    torch.testing.assert_close(out.hard, base.hard)
    s = {h: v / 0.02 for h, v in rows().items()}
    p = torch.softmax(s["dense"] + 0.3 * s["sparse"] + s["colbert"], -1)
    distill = sum(soft_cross_entropy(p, s[h]) for h in s) / 3  # λ' = 1 / 1 / 1
    torch.testing.assert_close(out.distill, distill)
    torch.testing.assert_close(out.loss, 0.2 * base.hard + 1.5 * distill)
    with pytest.raises(ValueError, match="distill_head_weights"):
        M3Loss(distill_head_weights={"dens": 1.0})


def test_ensemble_weight_scales_the_ensemble_hard_label_term_only():
    base = M3Loss()(rows(), POS, G)
    out = M3Loss(ensemble_weight=3.0)(rows(), POS, G)
    s = {h: v / 0.02 for h, v in rows().items()}
    l_e = infonce(s["dense"] + 0.3 * s["sparse"] + s["colbert"], POS)
    torch.testing.assert_close(out.head_losses["ensemble"], l_e)
    torch.testing.assert_close(out.hard, base.hard + 2.0 * l_e / 4)
    torch.testing.assert_close(out.distill, base.distill)
    with pytest.raises(ValueError, match="ensemble_weight"):
        M3Loss(ensemble_weight=-1.0)


def test_passage_to_query_term_equals_its_definition():
    scores = rows(seed=5)
    s = {h: v / 0.02 for h, v in scores.items()}
    s_e = s["dense"] + 0.3 * s["sparse"] + s["colbert"]

    def reverse(row):  # each positive passage j against the B queries, by hand
        return sum(-torch.log_softmax(row[:, POS[j]], 0)[j] for j in range(B)) / B

    torch.testing.assert_close(passage_to_query_infonce(s["dense"], POS), reverse(s["dense"]))
    base = M3Loss()(scores, POS, G)
    out = M3Loss(passage_to_query_weight=0.5)(scores, POS, G)
    for h, row in {**s, "ensemble": s_e}.items():
        torch.testing.assert_close(out.head_losses[h], base.head_losses[h] + 0.5 * reverse(row))
    torch.testing.assert_close(out.distill, base.distill)


def test_distillation_diagnostics_equal_their_definitions():
    scores = rows(seed=4)
    scores["dense"][1, 3] += 1.0    # query 1: dense puts a negative first
    out = M3Loss()(scores, POS, G)
    s = {h: v / 0.02 for h, v in scores.items()}
    p = torch.softmax(s["dense"] + 0.3 * s["sparse"] + s["colbert"], -1)
    d = out.diagnostics
    torch.testing.assert_close(d["kd/teacher_entropy"], -(p * p.log()).sum(-1).mean())
    torch.testing.assert_close(d["kd/teacher_top1"], (p.argmax(-1) == POS).float().mean())
    for h in s:
        kl = (p * (p.log() - torch.log_softmax(s[h], -1))).sum(-1).mean()
        torch.testing.assert_close(d[f"kd/kl_{h}"], kl)
        torch.testing.assert_close(d[f"kd/agree_{h}"], (s[h].argmax(-1) == p.argmax(-1)).float().mean())
    assert d["kd/teacher_top1"] < 1.0  # the dense push moved the teacher's top-1 of query 1 off its positive
    assert M3Loss(self_distill=False)(scores, POS, G).diagnostics == {}


def test_external_teacher_targets_come_from_data():
    ext_scores = torch.tensor([[3.0, 1.0], [2.5, 0.5], [2.0, 1.5]])
    loss = M3Loss(teacher=ExternalTeacher(), kd_loss_type=None)
    out = loss(rows(), POS, G, teacher_scores=ext_scores)
    p_ext = torch.zeros(B, B * G)
    p_ext.scatter_(1, POS[:, None] + torch.arange(G), torch.softmax(ext_scores, -1))
    s = {h: v / 0.02 for h, v in rows().items()}
    expected = sum(w * soft_cross_entropy(p_ext, s[h]) for h, w in (("dense", 1), ("sparse", 0.1), ("colbert", 1))) / 3
    torch.testing.assert_close(out.distill, expected)
    with pytest.raises(ValueError, match="teacher=external needs teacher scores"):
        loss(rows(), POS, G)


def test_mixed_teacher_interpolates():
    s = {h: v / 0.02 for h, v in rows().items()}
    ext = torch.zeros(B, B * G)
    ext[torch.arange(B), POS] = 1.0
    mixed = MixedTeacher(alpha=0.25)
    e = mixed.ensemble(s)
    torch.testing.assert_close(mixed.targets(e, ext), 0.25 * ext + 0.75 * torch.softmax(e, -1))
    torch.testing.assert_close(mixed.targets(e, None), torch.softmax(e, -1))


def test_m3_kd_loss_with_one_hot_teacher_is_infonce():
    scores = rows()["dense"] / 0.02
    one_hot = torch.zeros(B, G)
    one_hot[:, 0] = 1.0
    torch.testing.assert_close(m3_kd_loss(one_hot, scores, POS), F.cross_entropy(scores, POS))


def test_single_head_is_plain_infonce():
    scores = rows(heads=("dense",))
    out = M3Loss(self_distill=True)(scores, POS, G)
    torch.testing.assert_close(out.loss, F.cross_entropy(scores["dense"] / 0.02, POS))
    assert out.distill is None


def test_two_heads_average_over_three_terms():
    scores = rows(heads=("dense", "sparse"))
    out = M3Loss(self_distill=False)(scores, POS, G)
    s = {h: v / 0.02 for h, v in scores.items()}
    s_e = s["dense"] + 0.3 * s["sparse"]
    expected = (F.cross_entropy(s["dense"], POS) + 0.1 * F.cross_entropy(s["sparse"], POS)
                + F.cross_entropy(s_e, POS)) / 3
    torch.testing.assert_close(out.loss, expected)


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="kd_loss_type"):
        M3Loss(kd_loss_type="mse")
    with pytest.raises(ValueError, match="unknown head"):
        WeightedTeacher({"bm25": 1.0})
    with pytest.raises(ValueError, match="temperature"):
        M3Loss(temperature=0)
