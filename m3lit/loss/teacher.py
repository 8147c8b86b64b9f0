"""Teacher aggregators: how the heads' scores become the ensemble score s_e and the distillation targets p.

Every aggregator exposes
- ``ensemble(scores) -> s_e`` (B, N), with gradient; it feeds the ensemble's hard-label loss L_e;
- ``targets(s_e, external) -> p`` (B, N), detached probabilities for the self-distillation loss L';
- ``weights() -> {head: w}`` for logging.
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
    """Base: s_e = Σ_h w_h s_h over the active heads; p = softmax(s_e) (the M3 self-knowledge teacher)."""

    uses_external = False

    def __init__(self, weights: Mapping[str, float] | None = None):
        super().__init__()
        self._fixed = _weights(weights)

    def weight_tensor(self, head: str, like: torch.Tensor) -> torch.Tensor:
        return like.new_tensor(self._fixed[head])

    def weights(self) -> dict[str, float]:
        return dict(self._fixed)

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

    def __init__(self) -> None:
        super().__init__({h: 1.0 for h in HEADS})


class LearnedTeacher(TeacherAggregator):
    """Weights w_h = softplus(θ_h) trained with the model (through the ensemble loss), initialised at ``weights``."""

    def __init__(self, weights: Mapping[str, float] | None = None):
        super().__init__(weights)
        init = []
        for head in HEADS:
            w = self._fixed[head]
            if w <= 0:
                raise ValueError(f"teacher=learned: initial weight of {head} must be > 0, got {w}")
            init.append(math.log(math.expm1(w)))
        self.raw = nn.Parameter(torch.tensor(init))
        self._index = {h: i for i, h in enumerate(HEADS)}

    def weight_tensor(self, head: str, like: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.raw[self._index[head]]).to(like.dtype)

    def weights(self) -> dict[str, float]:
        values = nn.functional.softplus(self.raw.detach().float())
        return {h: float(values[i]) for h, i in self._index.items()}


class ExternalTeacher(TeacherAggregator):
    """Targets from the data's teacher scores (``pos_scores``/``neg_scores``); ``weights`` still define s_e."""

    uses_external = True

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None) -> torch.Tensor:
        if external is None:
            raise ValueError("teacher=external needs teacher scores in the data (pos_scores/neg_scores on every line "
                             "of the batch's dataset); use teacher=mixed to fall back to the self teacher")
        return external


class MixedTeacher(TeacherAggregator):
    """p = α p_external + (1 - α) p_self; batches without external scores use p_self alone."""

    uses_external = True

    def __init__(self, alpha: float = 0.5, weights: Mapping[str, float] | None = None):
        super().__init__(weights)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"teacher.alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None) -> torch.Tensor:
        own = self.self_targets(ensemble)
        return own if external is None else self.alpha * external + (1.0 - self.alpha) * own
