"""Choices and defaults that the stage configs show in --help and the library reads, without importing numpy or
pyarrow (or the stage that declares the option)."""

from __future__ import annotations

from typing import Literal

Measure = Literal["auto", "rrf", "student_ce", "ppl_ratio", "nll_gap", "kl"]
MixtureKind = Literal["ddk", "uniform", "proportional"]
# DDK's discrepancy factor: "ratio" is the paper's Eq. 1/2 (softmax of ppl_S/ppl_T, ψ = r·exp(ratio));
# "log-ratio" is the tempered variant for large gaps (weights ∝ ratio^(1/τ), ψ = r·ratio^(1/τ)).
DdkFactor = Literal["ratio", "log-ratio"]
DDK_ALPHA = 0.5
DDK_INTERVAL = 1000
DDK_FACTOR: DdkFactor = "ratio"
DDK_TAU = 1.0
# Where train's teacher signal comes from (TrainConfig.teacher_mode); the study report reads an arm's from its recipe.
TeacherMode = Literal["online", "offline", "none"]
TEACHER_MODE: TeacherMode = "online"

__all__ = ["Measure", "MixtureKind", "DdkFactor", "DDK_ALPHA", "DDK_INTERVAL", "DDK_FACTOR", "DDK_TAU", "TeacherMode",
           "TEACHER_MODE"]
