"""m3lit reproduces FlagEmbedding's BGE-M3 numbers (encode outputs, scores, the five training losses)."""
import numpy as np
import pytest
import torch

from m3lit import M3Embedder
from m3lit.loss import M3Loss, WeightedTeacher
from m3lit.model.scores import score_matrix

TOL = 1e-5


@pytest.fixture(scope="module")
def embedder(tiny_m3_dir):
    return M3Embedder.from_pretrained(tiny_m3_dir)


def test_tokenization_matches(embedder, reference):
    assert embedder.tokenize(reference["queries"], 512) == reference["query_input_ids"]
    assert embedder.tokenize(reference["passages"], 512) == reference["passage_input_ids"]


@pytest.mark.parametrize("side", ["queries", "passages"])
def test_encode_outputs(embedder, reference, side):
    out = embedder.encode(reference[side], batch_size=2)
    ref = reference[f"{side}_out"]
    np.testing.assert_allclose(out["dense"], np.array(ref["dense_vecs"]), atol=TOL)
    for mine, theirs in zip(out["sparse"], ref["lexical_weights"]):
        assert set(mine) == {int(k) for k in theirs}
        for k, v in theirs.items():
            assert mine[int(k)] == pytest.approx(v, abs=TOL)
    for mine, theirs in zip(out["colbert"], ref["colbert_vecs"]):
        np.testing.assert_allclose(mine, np.array(theirs), atol=TOL)


def test_score_matrices(embedder, reference):
    q = embedder.encode(reference["queries"])
    p = embedder.encode(reference["passages"])
    np.testing.assert_allclose(q["dense"] @ p["dense"].T, reference["scores_3x3"]["dense"], atol=TOL)
    lexical = [[embedder.lexical_matching_score(a, b) for b in p["sparse"]] for a in q["sparse"]]
    np.testing.assert_allclose(lexical, reference["scores_3x3"]["lexical"], atol=TOL)
    colbert = [[embedder.colbert_score(a, b) for b in p["colbert"]] for a in q["colbert"]]
    np.testing.assert_allclose(colbert, reference["scores_3x3"]["colbert"], atol=TOL)


def test_compute_score(embedder, reference):
    pairs = [(q, p) for q in reference["queries"] for p in reference["passages"]]
    scores = embedder.compute_score(pairs, batch_size=4, weights_for_different_modes=[0.4, 0.2, 0.4])
    for mode, values in reference["compute_score_pairs_weights_0.4_0.2_0.4"].items():
        np.testing.assert_allclose(scores[mode], values, atol=TOL, err_msg=mode)


CASES = {
    "no_kd__no_selfdistill": dict(self_distill=False),
    "no_kd__selfdistill_start-1": dict(self_distill=True),
    "kd_m3_kd_loss__selfdistill": dict(self_distill=True, kd_loss_type="m3_kd_loss", external=True),
    "kd_kl_div__selfdistill": dict(self_distill=True, kd_loss_type="kl_div", external=True),
    "kd_m3_kd_loss__no_selfdistill": dict(self_distill=False, kd_loss_type="m3_kd_loss", external=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_losses(embedder, reference, case):
    setup = reference["train_setup"]
    kwargs = dict(CASES[case])
    external = kwargs.pop("external", False)
    model, tok = embedder.model.train(), embedder.tokenizer
    q = tok(reference["queries"], padding=True, return_tensors="pt")
    p = tok(setup["passages_flat_order"], padding=True, return_tensors="pt")
    qr, pr = model(q["input_ids"], q["attention_mask"]), model(p["input_ids"], p["attention_mask"])
    scores = {h: score_matrix(h, qr, pr) for h in model.active_heads}
    group = setup["group_size"]
    teacher = torch.tensor(setup["teacher_scores"]).view(-1, group) if external else None
    # FlagEmbedding's knowledge_distillation: a teacher that uses the data's scores (the self-distillation targets its own)
    loss = M3Loss(temperature=setup["temperature"], teacher=WeightedTeacher(use_data_scores=external), **kwargs)
    out = loss(scores, torch.arange(3) * group, group, teacher_scores=teacher, step=0)
    assert float(out.loss) == pytest.approx(reference["train_losses_flagembedding"][case], abs=TOL)
