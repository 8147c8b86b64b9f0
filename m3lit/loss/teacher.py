"""Teacher aggregators: how the heads' scores become the ensemble score s_e and the distillation targets p.

Every aggregator exposes
- ``ensemble(scores) -> s_e`` (B, N), with gradient; it feeds the ensemble's hard-label loss L_e;
- ``targets(s_e, external, sources) -> p`` (B, N), detached probabilities for the self-distillation loss L';
  ``sources`` holds the temperature-scaled (B, N) score rows of other scorers of the same batch, by name
  (``"ema"``: the momentum copy's heads), for the teachers that name them in ``sources_needed``;
- ``weights() -> {head: w}`` and ``temperature() -> float | None`` for logging;
- ``uses_external``: whether the data's teacher scores (``pos_scores`` / ``neg_scores``) are used at all — an
  explicit choice of the teacher (``use_data_scores``; always for ``external`` and ``mixed``); a teacher that does
  not use them ignores them, whatever the batch carries.
``scores`` maps each active head to its (B, N) temperature-scaled score row; ``external`` is the external
teacher's distribution placed on the row (zeros outside each query's group) or ``None``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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

    @property
    def sources_needed(self) -> tuple[str, ...]:
        """Other scorers of the batch this teacher's targets come from (``"ema"``); () for the plain ensemble."""
        return ()

    def ema_settings(self) -> "EmaSettings | None":
        """How the momentum copy is kept, for teachers that use one."""
        return None

    def ensemble(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        heads = list(scores)
        total = self.weight_tensor(heads[0], scores[heads[0]]) * scores[heads[0]]
        for head in heads[1:]:
            total = total + self.weight_tensor(head, scores[head]) * scores[head]
        return total

    def self_targets(self, ensemble: torch.Tensor) -> torch.Tensor:
        return torch.softmax(ensemble.detach(), dim=-1)

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None,
                sources: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
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

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None,
                sources: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
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

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None,
                sources: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
        own = self.self_targets(ensemble)
        return own if external is None else self.alpha * external + (1.0 - self.alpha) * own


@dataclass(frozen=True)
class EmaSettings:
    """A momentum (EMA) copy θ' of the model: every ``update_every`` optimizer steps θ' ← d·θ' + (1 − d)·θ with
    d = ``decay``; before ``start_step`` θ' follows θ exactly (d = 0) and the targets are the current ensemble's."""

    decay: float = 0.999
    start_step: int = 0
    update_every: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"teacher EMA decay={self.decay}: expected 0 ≤ decay < 1")
        if self.start_step < 0 or self.update_every < 1:
            raise ValueError(f"teacher EMA start_step={self.start_step}, update_every={self.update_every}: expected "
                             "start_step ≥ 0 and update_every ≥ 1")


class EmaTeacher(TeacherAggregator):
    """p = softmax(Σ_h w_h s'_h): the ensemble (these ``weights``) of a momentum copy's heads scoring the same batch
    without gradient (``EmaSettings``: ``decay``, ``start_step``, ``update_every``). Before ``start_step``: the
    current model's ensemble, as ``weighted``."""

    def __init__(self, weights: Mapping[str, float] | None = None, decay: float = 0.999, start_step: int = 0,
                 update_every: int = 1, use_data_scores: bool = False):
        super().__init__(weights, use_data_scores)
        self._ema = EmaSettings(float(decay), int(start_step), int(update_every))

    @property
    def sources_needed(self) -> tuple[str, ...]:
        return ("ema",)

    def ema_settings(self) -> EmaSettings:
        return self._ema

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None,
                sources: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
        if sources and "ema" in sources:
            return torch.softmax(self.ensemble(sources["ema"]).detach(), dim=-1)
        return self.self_targets(ensemble)


MIX_SOURCES = ("ensemble", "ema", "snapshot", "views", "external")
COPY_SOURCES = ("ema", "snapshot", "views")   # scorers of the batch the LightningModule runs for the teacher


class MixTeacher(TeacherAggregator):
    """p = Σ_s a_s softmax(s_e^(s) / T_s) / Σ_s a_s over the sources a batch has: ``ensemble`` (the current model's
    heads), ``ema`` (a momentum copy's heads; ``ema`` settings as ``EmaTeacher``'s), ``snapshot`` (the model at an
    earlier state, over each line's group; ``snapshot: {every_n_steps}`` as ``SnapshotTeacher``'s), ``views`` (the
    model on a second view of the batch, one way; ``views: {view, rate, seed}`` as ``ViewsTeacher``'s),
    ``external`` (the data's teacher distribution, at ``loss.external_temperature``; batches without teacher scores
    leave it out). s_e^(s) combines a source's heads with these ``weights``; ``temperatures`` T_s default 1. Before
    the EMA's start or the first snapshot, those sources are the current ensemble."""

    def __init__(self, sources: Mapping[str, float], temperatures: Mapping[str, float] | None = None,
                 weights: Mapping[str, float] | None = None, ema: Mapping[str, float] | None = None,
                 snapshot: Mapping[str, Any] | None = None, views: Mapping[str, Any] | None = None,
                 use_data_scores: bool | None = None):
        unknown = set(sources) - set(MIX_SOURCES)
        if unknown or not sources:
            raise ValueError(f"teacher.sources={dict(sources)}: expected weights of {list(MIX_SOURCES)}")
        if any(float(a) < 0 for a in sources.values()) or not any(float(a) > 0 for a in sources.values()):
            raise ValueError(f"teacher.sources={dict(sources)}: weights must be ≥ 0, one of them > 0")
        temperatures = {k: float(v) for k, v in (temperatures or {}).items()}
        if set(temperatures) - set(sources) or "external" in temperatures:
            raise ValueError(f"teacher.temperatures={temperatures}: only for the sources given (not external) "
                             "(the external distribution's is loss.external_temperature)")
        if any(t <= 0 for t in temperatures.values()):
            raise ValueError(f"teacher.temperatures={temperatures}: must be > 0")
        uses_external = float(sources.get("external", 0.0)) > 0
        if use_data_scores is not None and bool(use_data_scores) != uses_external:
            raise ValueError(f"teacher.use_data_scores={use_data_scores} contradicts teacher.sources (the data's "
                             f"scores are {'' if uses_external else 'not '}a source)")
        super().__init__(weights, uses_external)
        self.mix = {k: float(v) for k, v in sources.items() if float(v) > 0}  # weight 0: the source is dropped
        self.mix_temperatures = {k: temperatures.get(k, 1.0) for k in sources if k != "external"}
        self._ema = EmaSettings(**{k: (float(v) if k == "decay" else int(v)) for k, v in (ema or {}).items()}) \
            if "ema" in self.mix else None
        every = (snapshot or {}).get("every_n_steps")
        self.every_n_steps = None if every is None else int(every)
        view = dict(views or {})
        self.view, self.rate, self.seed = view.get("view", "token_drop"), float(view.get("rate", 0.1)), \
            int(view.get("seed", 0))
        self.direction, self.symmetric = "one_way", False  # a mixture source only teaches

    @property
    def sources_needed(self) -> tuple[str, ...]:
        return tuple(s for s in COPY_SOURCES if s in self.mix)

    def ema_settings(self) -> EmaSettings | None:
        return self._ema

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None,
                sources: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
        parts: list[tuple[float, torch.Tensor]] = []
        for name, share in self.mix.items():
            if name == "ensemble":
                parts.append((share, torch.softmax(ensemble.detach() / self.mix_temperatures[name], dim=-1)))
            elif name in COPY_SOURCES:
                scores = (sources or {}).get(name)
                if scores is not None:  # before the EMA's start / the first snapshot the current ensemble stands in
                    row = self.ensemble(scores).detach()
                else:
                    row = ensemble.detach()
                parts.append((share, torch.softmax(row / self.mix_temperatures[name], dim=-1)))
            elif external is not None:
                parts.append((share, external))
        total = sum(share for share, _ in parts)
        if total <= 0:
            raise ValueError(f"teacher.sources={self.mix}: no source with weight > 0 in this batch")
        return sum(share * p for share, p in parts) / total


class ViewsTeacher(TeacherAggregator):
    """Distillation between two views of each query and passage: the model scores a second view of the batch
    (``view``: ``dropout`` — a second pass, SimCSE-style; ``token_drop`` / ``mask`` — tokens dropped / masked at
    ``rate``, see ``m3lit.loss.views``) and the first view's heads learn p = softmax(Σ_h w_h s^(2)_h) (no gradient
    through p). ``symmetric``: the second view's heads also learn the first view's ensemble distribution (the two
    terms averaged); ``one_way``: only the first view learns."""

    def __init__(self, view: str = "dropout", rate: float = 0.1, direction: str = "symmetric", seed: int = 0,
                 weights: Mapping[str, float] | None = None, use_data_scores: bool = False):
        from .views import VIEW_KINDS

        if view not in VIEW_KINDS:
            raise ValueError(f"teacher.view={view!r}: expected one of {list(VIEW_KINDS)}")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"teacher.rate={rate}: expected 0 ≤ rate < 1")
        if direction not in ("symmetric", "one_way"):
            raise ValueError(f"teacher.direction={direction!r}: expected symmetric or one_way")
        super().__init__(weights, use_data_scores)
        self.view, self.rate, self.direction, self.seed = view, float(rate), direction, int(seed)

    @property
    def sources_needed(self) -> tuple[str, ...]:
        return ("views",)

    @property
    def symmetric(self) -> bool:
        return self.direction == "symmetric"

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None,
                sources: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
        if not sources or "views" not in sources:
            raise ValueError("teacher=views: the second view's scores are missing (the LightningModule computes them)")
        return torch.softmax(self.ensemble(sources["views"]).detach(), dim=-1)


class SnapshotTeacher(TeacherAggregator):
    """The model at an earlier state teaches: a frozen copy taken at the end of every epoch (``every_n_steps``:
    every N optimizer steps instead) scores each training line's group once — the scores cached per line, see
    ``m3lit.loss.snapshot`` — and p = softmax(Σ_h w_h s^snap_h) over the line's group (0 elsewhere in the row).
    Before the first snapshot: the current ensemble, as ``weighted``."""

    def __init__(self, weights: Mapping[str, float] | None = None, every_n_steps: int | None = None,
                 use_data_scores: bool = False):
        super().__init__(weights, use_data_scores)
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(f"teacher.every_n_steps={every_n_steps}: expected ≥ 1 (or null: every epoch)")
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)

    @property
    def sources_needed(self) -> tuple[str, ...]:
        return ("snapshot",)

    def targets(self, ensemble: torch.Tensor, external: torch.Tensor | None,
                sources: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> torch.Tensor:
        if sources and "snapshot" in sources:  # group scores on the row, MASKED_SCORE elsewhere: 0 weight there
            return torch.softmax(self.ensemble(sources["snapshot"]).detach(), dim=-1)
        return self.self_targets(ensemble)


class LayerwiseTeacher(TeacherAggregator):
    """Deeper layers teach earlier ones: heads on the intermediate ``layers`` (the model's own heads, or with
    ``shared_heads=false`` sparse / multi-vector heads of their own per layer) learn the final layer's ensemble
    distribution p = softmax(Σ_h w_h s_h) (no gradient through p), and with ``hard_labels`` the labels too:
    L_layers = mean_k [Σ_h λ'_h CE(p, s^(k)_h) (+ Σ_h λ_h InfoNCE(s^(k)_h))] / n_heads, added to the M3 loss with
    ``weight``. The final layer distils from its own ensemble as ``weighted``. ``m3lit-train export_layers=[k]``
    writes the first k layers with their heads as a model of its own."""

    def __init__(self, layers: Sequence[int] = (3,), shared_heads: bool = True, hard_labels: bool = False,
                 weight: float = 1.0, weights: Mapping[str, float] | None = None, use_data_scores: bool = False):
        super().__init__(weights, use_data_scores)
        if not layers:
            raise ValueError("teacher.layers: name at least one intermediate layer")
        if weight < 0:
            raise ValueError(f"teacher.weight={weight}: must be ≥ 0")
        self.layers = sorted({int(k) for k in layers})
        self.shared_heads, self.hard_labels, self.layer_weight = bool(shared_heads), bool(hard_labels), float(weight)
