"""Choices and defaults the plan command shows in --help, without importing numpy or pyarrow."""

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

__all__ = ["Measure", "MixtureKind", "DdkFactor", "DDK_ALPHA", "DDK_INTERVAL", "DDK_FACTOR", "DDK_TAU"]
