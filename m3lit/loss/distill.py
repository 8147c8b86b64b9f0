"""Distillation losses: from soft targets (self-distillation) and from external teacher scores.

``soft_cross_entropy`` is FlagEmbedding's ``kl_div`` distillation term (cross-entropy to the targets; it differs
from KL divergence by the targets' entropy, a constant). ``m3_kd_loss`` is FlagEmbedding's ``m3_kd_loss``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .infonce import group_columns, group_scores, infonce


def soft_cross_entropy(targets: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """CE(p, s) = mean_b -Σ_n p[b, n] log softmax(s[b])[n]. targets, scores: (B, N)."""
    return -(targets * torch.log_softmax(scores, dim=-1)).sum(-1).mean()


def m3_kd_loss(targets: torch.Tensor, scores: torch.Tensor, pos_index: torch.Tensor) -> torch.Tensor:
    """Σ_g mean_b p[b, g] · CE_g(b), where CE_g treats group member g as the positive and masks members < g.

    targets (B, G) teacher probabilities over the group; scores (B, N) the full row.
    """
    columns = group_columns(pos_index, targets.shape[1])
    mask = torch.zeros_like(scores)
    loss = scores.new_zeros(())
    for g in range(targets.shape[1]):
        ce = F.cross_entropy(scores + mask, columns[:, g], reduction="none")
        loss = loss + (targets[:, g] * ce).mean()
        mask = mask.scatter(1, columns[:, g:g + 1], torch.finfo(scores.dtype).min)
    return loss


def kl_div_kd_loss(targets: torch.Tensor, scores: torch.Tensor, pos_index: torch.Tensor) -> torch.Tensor:
    """CE(p, group scores) + InfoNCE over the full row: FlagEmbedding's ``kl_div`` external-teacher loss."""
    local = group_scores(scores, pos_index, targets.shape[1])
    return soft_cross_entropy(targets, local) + infonce(scores, pos_index)


KD_LOSSES = {"m3_kd_loss": m3_kd_loss, "kl_div": kl_div_kd_loss}
