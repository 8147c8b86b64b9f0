"""Teacher aggregators: how the heads' scores become the ensemble score s_e and the distillation targets p.

Every aggregator exposes
- ``ensemble(scores) -> s_e`` (B, N), with gradient; it feeds the ensemble's hard-label loss L_e;
- ``targets(s_e, external) -> p`` (B, N), detached probabilities for the self-distillation loss L';
- ``weights() -> {head: w}`` and ``temperature() -> float | None`` for logging;
- ``uses_external``: whether the data's teacher scores (``pos_scores`` / ``neg_scores``) are used at all — an
  explicit choice of the teacher (``use_data_scores``; always for ``external`` and ``mixed``); a teacher that does
  not use them ignores them, whatever the batch carries.
``scores`` maps each active head to its (B, N) temperature-scaled score row; ``external`` is the external
teacher's distribution placed on the row (zeros outside each query's group) or ``None``.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from ..model.defaults import ENSEMBLE_WEIGHTS, HEADS


def _weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    merged = dict(ENSEMBLE_WEIGHTS)
    for head, w in (weights or {}).items():
        if head not in HEADS:
            raise ValueError(f"teacher.weights: unknown head {head!r}; expected {HEADS}")
        merged[head] = float(w)
    return merged


class TeacherAggregator(nn.Module):
    """Base: s_e = Σ_h w_h s_h over the active heads; p = softmax(s_e) (the M3 self-knowledge teacher).

    ``use_data_scores=True``: batches with teacher scores take their hard-label terms against them (the loss's
    ``kd_loss_type``: FlagEmbedding's ``knowledge_distillation``), the self-distillation targets staying this
    teacher's."""

    def __init__(self, weights: Mapping[str, float] | None = None, use_data_scores: bool = False):
        super().__init__()
        self._fixed = _weights(weights)
        self.uses_external = bool(use_data_scores)

    def weight_tensor(self, head: str, like: torch.Tensor) -> torch.Tensor:
        return like.new_tensor(self._fixed[head])

    def weights(self) -> dict[str, float]:
        return dict(self._fixed)

    def temperature(self) -> float | None:
        """The ensemble's own temperature when it has one (learned), else None."""
        return None

    def ensemble(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        heads = list(scores)
        total = self.weight_tensor(heads[0], scores[heads[0]]) * scores[heads[0]]
        for head in heads[1:]:
            total = total + self.weight_tensor(head, scores[head]) * scores[head]
        return total

    def self_targets(self, ensemble: torch.Tensor) -> torch.Tensor:
        return torch.softmax(ensemble.detach(), dim=-1)

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None) -> torch.Tensor:
        return self.self_targets(ensemble)


class WeightedTeacher(TeacherAggregator):
    """Fixed weights w (default dense 1, sparse 0.3, colbert 1: the M3 paper's)."""


class UniformTeacher(TeacherAggregator):
    """Equal weights: s_e = Σ_h s_h."""

    def __init__(self, use_data_scores: bool = False) -> None:
        super().__init__({h: 1.0 for h in HEADS}, use_data_scores)


class LearnedTeacher(TeacherAggregator):
    """Weights and temperature trained with the model through the ensemble loss:
    w_h = S · softmax(θ)_h (their sum S = Σ of the initial ``weights`` stays fixed, so the weights only say how
    the heads are mixed) and s_e = Σ_h w_h s_h / t with t = softplus(φ) (init 1; ``learn_temperature=false`` keeps
    it at 1), which alone sets how sharp the ensemble is. Initialised at ``weights``."""

    def __init__(self, weights: Mapping[str, float] | None = None, learn_temperature: bool = True,
                 use_data_scores: bool = False):
        super().__init__(weights, use_data_scores)
        for head in HEADS:
            if self._fixed[head] <= 0:
                raise ValueError(f"teacher=learned: initial weight of {head} must be > 0, got {self._fixed[head]}")
        self.total = math.fsum(self._fixed[h] for h in HEADS)
        self.raw = nn.Parameter(torch.tensor([math.log(self._fixed[h] / self.total) for h in HEADS]))
        self.raw_temperature = nn.Parameter(torch.tensor(math.log(math.expm1(1.0))), requires_grad=learn_temperature)
        self._index = {h: i for i, h in enumerate(HEADS)}

    def _temperature_tensor(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_temperature)

    def weight_tensor(self, head: str, like: torch.Tensor) -> torch.Tensor:
        w = self.total * torch.softmax(self.raw, dim=0)[self._index[head]] / self._temperature_tensor()
        return w.to(like.dtype)

    def weights(self) -> dict[str, float]:
        values = self.total * torch.softmax(self.raw.detach().float(), dim=0)
        return {h: float(values[i]) for h, i in self._index.items()}

    def temperature(self) -> float:
        return float(self._temperature_tensor().detach())


class ExternalTeacher(TeacherAggregator):
    """Targets from the data's teacher scores (``pos_scores``/``neg_scores``); ``weights`` still define s_e."""

    def __init__(self, weights: Mapping[str, float] | None = None, use_data_scores: bool = True):
        if not use_data_scores:
            raise ValueError("teacher=external is the data's teacher scores: use_data_scores=false contradicts it")
        super().__init__(weights, True)

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None) -> torch.Tensor:
        if external is None:
            raise ValueError("teacher=external needs teacher scores in the data (pos_scores/neg_scores on every line "
                             "of the batch's dataset); use teacher=mixed to fall back to the self teacher")
        return external


class MixedTeacher(TeacherAggregator):
    """p = α p_external + (1 - α) p_self; batches without external scores use p_self alone."""

    def __init__(self, alpha: float = 0.5, weights: Mapping[str, float] | None = None, use_data_scores: bool = True):
        if not use_data_scores:
            raise ValueError("teacher=mixed mixes in the data's teacher scores: use_data_scores=false contradicts it")
        super().__init__(weights, True)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"teacher.alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None) -> torch.Tensor:
        own = self.self_targets(ensemble)
        return own if external is None else self.alpha * external + (1.0 - self.alpha) * own
