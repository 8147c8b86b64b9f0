"""teacher=ema and teacher=mix: targets equal hand-computed references, the EMA update equals its formula, the copy
is checkpointed and resumed, and (tests/test_scale_cross_device.py) 2-rank DDP gives the one-process gradients."""
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import random_batch, tiny_module  # noqa: E402

from m3lit.loss import EmaSettings, EmaTeacher, M3Loss, MixTeacher, soft_cross_entropy  # noqa: E402
from m3lit.loss.ema_model import EmaModel  # noqa: E402

B, G = 3, 2
POS = torch.arange(B) * G


def rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {h: torch.randn(B, B * G, generator=g) * 0.05 for h in ("dense", "sparse", "colbert")}


def test_ema_teacher_targets_are_the_copys_ensemble():
    scores, ema_scores = rows(0), rows(1)
    out = M3Loss(teacher=EmaTeacher())(scores, POS, G, sources={"ema": ema_scores})
    s = {h: v / 0.02 for h, v in scores.items()}
    e = {h: v / 0.02 for h, v in ema_scores.items()}
    p = torch.softmax(e["dense"] + 0.3 * e["sparse"] + e["colbert"], -1)
    expected = sum(w * soft_cross_entropy(p, s[h]) for h, w in (("dense", 1), ("sparse", 0.1), ("colbert", 1))) / 3
    torch.testing.assert_close(out.distill, expected)
    # before start_step (no ema source given): the current ensemble, as teacher=weighted
    torch.testing.assert_close(M3Loss(teacher=EmaTeacher())(scores, POS, G).distill, M3Loss()(scores, POS, G).distill)


def test_mix_teacher_is_the_weighted_mean_of_its_sources():
    scores, ema_scores = rows(0), rows(1)
    s = {h: v / 0.02 for h, v in scores.items()}
    e = {h: v / 0.02 for h, v in ema_scores.items()}
    teacher = MixTeacher({"ensemble": 0.25, "ema": 0.5, "external": 0.25}, temperatures={"ema": 0.5})
    assert teacher.uses_external and teacher.sources_needed == ("ema",)
    ext = torch.zeros(B, B * G)
    ext[torch.arange(B), POS] = 1.0
    own = teacher.ensemble(s)
    p_ema = torch.softmax(teacher.ensemble(e) / 0.5, -1)
    torch.testing.assert_close(teacher.targets(own, ext, {"ema": e}),
                               0.25 * torch.softmax(own, -1) + 0.5 * p_ema + 0.25 * ext)
    # a batch without teacher scores: the other sources, renormalised
    torch.testing.assert_close(teacher.targets(own, None, {"ema": e}),
                               (0.25 * torch.softmax(own, -1) + 0.5 * p_ema) / 0.75)
    assert MixTeacher({"ensemble": 1.0, "ema": 0.0}).sources_needed == ()  # weight 0 drops a source
    # every copy source at once: snapshot (over the groups) and a second view too
    snap, view = rows(2), rows(3)
    every = MixTeacher({"ensemble": 1.0, "ema": 1.0, "snapshot": 1.0, "views": 1.0},
                       snapshot={"every_n_steps": 5}, views={"view": "mask", "rate": 0.2})
    assert every.sources_needed == ("ema", "snapshot", "views") and every.every_n_steps == 5
    assert (every.view, every.rate, every.symmetric) == ("mask", 0.2, False)
    scaled = {name: {h: v / 0.02 for h, v in r.items()} for name, r in (("ema", ema_scores), ("snapshot", snap),
                                                                         ("views", view))}
    expected = (torch.softmax(own, -1) + sum(torch.softmax(every.ensemble(scaled[n]), -1) for n in scaled)) / 4
    torch.testing.assert_close(every.targets(own, None, scaled), expected)
    with pytest.raises(ValueError, match="expected weights of"):
        MixTeacher({"layers": 1.0})
    with pytest.raises(ValueError, match="contradicts"):
        MixTeacher({"ensemble": 1.0}, use_data_scores=True)


def test_ema_update_equals_its_formula():
    model = nn.Linear(3, 2)
    ema = EmaModel(model, EmaSettings(decay=0.9, start_step=2, update_every=1))
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.train().training
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 1)  # before start_step: θ' = θ
    torch.testing.assert_close(ema.copy.weight, model.weight)
    before = ema.copy.weight.clone()
    with torch.no_grad():
        model.weight.mul_(3.0)
    ema.update(model, 2)
    torch.testing.assert_close(ema.copy.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.update(model, 2)  # once per optimizer step
    every = EmaModel(model, EmaSettings(decay=0.5, update_every=3))
    assert not every.update(model, 4) and every.update(model, 6)
    with pytest.raises(ValueError, match="decay"):
        EmaSettings(decay=1.0)


class Weights(L.Callback):
    """Weights of the model and of the EMA copy after each step; a checkpoint after step ``save_at``."""

    def __init__(self, save_at=None, path=None):
        self.model, self.ema, self.save_at, self.path = [], [], save_at, path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.model.append({k: v.detach().clone() for k, v in module.model.state_dict().items()})
        self.ema.append({k: v.detach().clone() for k, v in module.ema.copy.state_dict().items()})
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path)


def fit(tmp_path, max_steps, ckpt_path=None, save_at=None):
    torch.manual_seed(0)
    module, weights = tiny_module(ema=True, lr=1e-2), Weights(save_at, str(tmp_path / "mid.ckpt"))
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[weights])
    batches = [random_batch(seed=1)] * 4  # the same batch each step: where a resumed epoch restarts is moot
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
    return module, weights


KEY = "encoder.embeddings.word_embeddings.weight"


def test_training_keeps_the_copy_by_the_formula_and_resumes_it_exactly(tmp_path, capsys, recwarn):
    full, weights = fit(tmp_path, 4, save_at=3)
    # only the copy is in eval mode, by design: no "modules in eval mode" warning from Lightning
    assert not [w for w in recwarn if "in eval mode" in str(w.message)]
    assert all(m.training for n, m in full.named_modules() if not n.startswith("ema"))
    assert "teacher EMA copy:" in capsys.readouterr().out
    expected = tiny_module(ema=True).ema.copy.state_dict()[KEY]  # the copy before training (seeded)
    for step in range(4):  # decay 0.5 from step 0: θ'_t = ½ θ'_{t-1} + ½ θ_t
        expected = 0.5 * expected + 0.5 * weights.model[step][KEY]
        torch.testing.assert_close(weights.ema[step][KEY], expected)
    assert not torch.equal(weights.ema[-1][KEY], weights.model[-1][KEY])
    # the copy is in the checkpoint (as it was after step 3); a run resumed from it ends where the full run did
    state = torch.load(tmp_path / "mid.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(state[f"ema.copy.{KEY}"], weights.ema[2][KEY], rtol=0, atol=0)
    resumed, resumed_weights = fit(tmp_path / "resumed", 4, ckpt_path=str(tmp_path / "mid.ckpt"))
    assert len(resumed_weights.ema) == 1
    torch.testing.assert_close(resumed_weights.ema[-1][KEY], weights.ema[-1][KEY], rtol=0, atol=0)
    torch.testing.assert_close(resumed.model.state_dict()[KEY], full.model.state_dict()[KEY], rtol=0, atol=0)
