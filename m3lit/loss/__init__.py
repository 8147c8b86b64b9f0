"""Losses: InfoNCE, distillation, teacher aggregators and the combined M3 objective."""
from .distill import KD_LOSSES, kl_div_kd_loss, m3_kd_loss, soft_cross_entropy
from .infonce import group_scores, group_to_row, infonce, passage_to_query_infonce
from .m3_loss import LossOutput, M3Loss
from .teacher import (
    EmaSettings,
    EmaTeacher,
    ExternalTeacher,
    LayerwiseTeacher,
    LearnedTeacher,
    MixedTeacher,
    MixTeacher,
    SnapshotTeacher,
    TeacherAggregator,
    UniformTeacher,
    ViewsTeacher,
    WeightedTeacher,
)

__all__ = ["KD_LOSSES", "kl_div_kd_loss", "m3_kd_loss", "soft_cross_entropy", "group_scores", "group_to_row",
           "infonce", "passage_to_query_infonce", "LossOutput", "M3Loss", "EmaSettings", "EmaTeacher", "ExternalTeacher", "MixTeacher", "SnapshotTeacher", "LayerwiseTeacher", "LearnedTeacher", "MixedTeacher",
           "TeacherAggregator", "UniformTeacher", "ViewsTeacher", "WeightedTeacher"]
