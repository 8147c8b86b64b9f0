"""The M3 training objective: per-head InfoNCE, the ensemble loss, and self-knowledge distillation.

With temperature τ and s_h = score_h / τ for the active heads h ∈ {dense, sparse, colbert}:
    hard-label   L  = (Σ_h λ_h L_h + λ_e L_e) / (n_heads + 1)    (one head: L = L_h; λ_e = ``ensemble_weight``, 1)
    distillation L' = Σ_h λ'_h CE(p, s_h) / n_heads,  p = teacher targets (detached)
    final        α L + β L' from step ``self_distill_start_step`` on, L before   (α = ``hard_weight``,
                 β = ``distill_weight``, both 0.5; λ' = ``distill_head_weights``, default λ)
L_h is InfoNCE over the candidate row (+ μ · InfoNCE of each positive passage over the batch's queries,
μ = ``passage_to_query_weight``, 0 by default), or, when the teacher uses the data's teacher scores
(``teacher.uses_external``), the batch carries them and ``kd_loss_type`` is set, FlagEmbedding's ``m3_kd_loss`` /
``kl_div`` against softmax(teacher_scores / external_temperature). ``teacher=views`` with ``symmetric``: L' is the
mean of the first view learning the second's ensemble and the second view (``sources["views"]``, with gradient)
learning the first's. A teacher that does not use data scores
ignores them. Defaults (λ = 1 / 0.1 / 1, w = 1 / 0.3 / 1, τ = 0.02) reproduce FlagEmbedding's BGE-M3 fine-tuning
loss (its ``knowledge_distillation`` = a teacher with ``use_data_scores=true``).

Diagnostics (``LossOutput.diagnostics``, no gradient) whenever L' is computed, for each head h:
``kd/kl_<h>`` = mean KL(p ‖ softmax(s_h)), ``kd/agree_<h>`` = share of queries whose top-1 candidate under s_h is
the teacher's; ``kd/teacher_entropy`` = mean −Σ p log p; ``kd/teacher_top1`` = share of queries whose teacher
top-1 is the labelled positive.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..model.defaults import LOSS_WEIGHTS
from .distill import KD_LOSSES, soft_cross_entropy
from .infonce import group_to_row, infonce, passage_to_query_infonce
from .teacher import TeacherAggregator, WeightedTeacher


@dataclass
class LossOutput:
    loss: torch.Tensor
    head_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # dense/sparse/colbert/ensemble
    hard: torch.Tensor | None = None
    distill: torch.Tensor | None = None
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)   # kd/* (see the module docstring)

    def scalars(self) -> dict[str, float]:
        out = {f"loss/{k}": float(v.detach()) for k, v in self.head_losses.items()}
        out["loss/hard"] = float(self.hard.detach())
        if self.distill is not None:
            out["loss/distill"] = float(self.distill.detach())
        out["loss/total"] = float(self.loss.detach())
        return out


class M3Loss(nn.Module):
    def __init__(
        self,
        teacher: TeacherAggregator | None = None,
        temperature: float = 0.02,
        head_weights: Mapping[str, float] | None = None,
        self_distill: bool = True,
        self_distill_start_step: int = 0,
        kd_loss_type: str | None = "m3_kd_loss",
        external_temperature: float = 1.0,
        hard_weight: float = 0.5,
        distill_weight: float = 0.5,
        distill_head_weights: Mapping[str, float] | None = None,
        ensemble_weight: float = 1.0,
        passage_to_query_weight: float = 0.0,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        if kd_loss_type is not None and kd_loss_type not in KD_LOSSES:
            raise ValueError(f"loss.kd_loss_type={kd_loss_type!r}: expected one of {sorted(KD_LOSSES)} or null")
        for name, given in (("head_weights", head_weights), ("distill_head_weights", distill_head_weights)):
            unknown = set(given or {}) - set(LOSS_WEIGHTS)
            if unknown:
                raise ValueError(f"loss.{name}: unknown head(s) {sorted(unknown)}")
        for name, value in (("hard_weight", hard_weight), ("distill_weight", distill_weight),
                            ("ensemble_weight", ensemble_weight),
                            ("passage_to_query_weight", passage_to_query_weight)):
            if value < 0:
                raise ValueError(f"loss.{name} must be ≥ 0, got {value}")
        self.teacher = teacher if teacher is not None else WeightedTeacher()
        self.temperature = temperature
        self.head_weights = {**LOSS_WEIGHTS, **{k: float(v) for k, v in (head_weights or {}).items()}}
        self.self_distill = self_distill
        self.self_distill_start_step = self_distill_start_step
        self.kd_loss_type = kd_loss_type
        self.external_temperature = external_temperature
        self.hard_weight, self.distill_weight = float(hard_weight), float(distill_weight)
        self.ensemble_weight = float(ensemble_weight)
        self.passage_to_query_weight = float(passage_to_query_weight)
        self.distill_head_weights = {**self.head_weights,
                                     **{k: float(v) for k, v in (distill_head_weights or {}).items()}}

    def contrastive(self, row: torch.Tensor, pos_index: torch.Tensor) -> torch.Tensor:
        """InfoNCE of each query over its (B, N) row, + μ · InfoNCE of each positive over the batch's queries."""
        loss = infonce(row, pos_index)
        if self.passage_to_query_weight:
            loss = loss + self.passage_to_query_weight * passage_to_query_infonce(row, pos_index)
        return loss

    def distill_active(self, step: int, n_heads: int) -> bool:
        if not self.self_distill or step < self.self_distill_start_step:
            return False
        # Distilling a single head from itself is a no-op; an external teacher still teaches it.
        return n_heads > 1 or self.teacher.uses_external

    def forward(
        self,
        scores: Mapping[str, torch.Tensor],
        pos_index: torch.Tensor,
        group_size: int,
        teacher_scores: torch.Tensor | None = None,
        step: int = 0,
        sources: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        layer_scores: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    ) -> LossOutput:
        """scores: head -> (B, N) raw scores; pos_index (B,) column of each query's positive (its group follows);
        teacher_scores: (B, G) external scores or None; sources: other scorers' raw (B, N) scores per head, by name
        (``"ema"``), for the teacher's targets (no gradient); layer_scores: {layer: head -> (B, N) raw scores} of the
        heads on intermediate layers (``teacher=layerwise``, with gradient)."""
        scaled = {h: s.float() / self.temperature for h, s in scores.items()}
        heads = list(scaled)
        external = None
        if teacher_scores is not None and self.teacher.uses_external:
            external = torch.softmax(teacher_scores.float().detach() / self.external_temperature, dim=-1)

        def hard(row: torch.Tensor) -> torch.Tensor:
            if external is not None and self.kd_loss_type is not None:
                return KD_LOSSES[self.kd_loss_type](external, row, pos_index)
            return self.contrastive(row, pos_index)

        head_losses = {h: hard(scaled[h]) for h in heads}
        ensemble = self.teacher.ensemble(scaled)
        if len(heads) > 1:
            head_losses["ensemble"] = hard(ensemble)
            hard_loss = (sum(self.head_weights[h] * head_losses[h] for h in heads)
                         + self.ensemble_weight * head_losses["ensemble"]) / (len(heads) + 1)
        else:
            hard_loss = head_losses[heads[0]]

        if not self.distill_active(step, len(heads)):
            out = LossOutput(loss=hard_loss, head_losses=head_losses, hard=hard_loss)
            return self._with_layers(out, None, layer_scores, pos_index)
        external_row = None if external is None else group_to_row(external, pos_index, ensemble.shape[1])
        scaled_sources = {name: {h: s.detach().float() / self.temperature for h, s in per.items() if h in scaled}
                          for name, per in (sources or {}).items()}
        targets = self.teacher.targets(ensemble, external_row, scaled_sources).detach()
        distill = sum(self.distill_head_weights[h] * soft_cross_entropy(targets, scaled[h]) for h in heads) / len(heads)
        if getattr(self.teacher, "symmetric", False) and sources and "views" in sources:
            # the second view's heads learn the first view's ensemble distribution too: the two terms averaged
            second = {h: s.float() / self.temperature for h, s in sources["views"].items() if h in scaled}
            own = self.teacher.self_targets(ensemble)
            back = sum(self.distill_head_weights[h] * soft_cross_entropy(own, second[h]) for h in heads) / len(heads)
            distill = (distill + back) / 2
        out = LossOutput(loss=self.hard_weight * hard_loss + self.distill_weight * distill, head_losses=head_losses,
                         hard=hard_loss, distill=distill, diagnostics=kd_diagnostics(targets, scaled, pos_index))
        return self._with_layers(out, targets, layer_scores, pos_index)

    def _with_layers(self, out: LossOutput, targets: torch.Tensor | None,
                     layer_scores: Mapping[int, Mapping[str, torch.Tensor]] | None,
                     pos_index: torch.Tensor) -> LossOutput:
        """``teacher=layerwise``: + weight · mean over layers of the layer's heads learning the final ensemble's
        targets (when distillation is on) and, with ``hard_labels``, the labels (module docstring of the teacher)."""
        if not layer_scores:
            return out
        teacher = self.teacher
        terms = []
        for layer, per_head in sorted(layer_scores.items()):
            scaled = {h: s.float() / self.temperature for h, s in per_head.items()}
            parts = []
            if targets is not None:
                parts.append(sum(self.distill_head_weights[h] * soft_cross_entropy(targets, v)
                                 for h, v in scaled.items()) / len(scaled))
            if getattr(teacher, "hard_labels", False):
                parts.append(sum(self.head_weights[h] * self.contrastive(v, pos_index) for h, v in scaled.items()) / len(scaled))
            if parts:
                term = sum(parts)
                out.head_losses[f"layer{layer}"] = term
                terms.append(term)
        if terms:
            out.loss = out.loss + getattr(teacher, "layer_weight", 1.0) * sum(terms) / len(terms)
        return out


@torch.no_grad()
def kd_diagnostics(targets: torch.Tensor, scaled: Mapping[str, torch.Tensor], pos_index: torch.Tensor,
                   ) -> dict[str, torch.Tensor]:
    """What the teacher does (module docstring): KL and top-1 agreement per head, teacher entropy and accuracy."""
    log_targets = torch.log(targets.clamp_min(1e-30))
    teacher_top = targets.argmax(dim=-1)
    out = {"kd/teacher_entropy": -(targets * log_targets).sum(-1).mean(),
           "kd/teacher_top1": (teacher_top == pos_index).float().mean()}
    for head, row in scaled.items():
        log_p = torch.log_softmax(row.detach(), dim=-1)
        out[f"kd/kl_{head}"] = (targets * (log_targets - log_p)).sum(-1).mean()
        out[f"kd/agree_{head}"] = (row.argmax(dim=-1) == teacher_top).float().mean()
    return out
