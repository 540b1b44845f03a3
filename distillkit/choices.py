"""Choices and defaults the plan command shows in --help, without importing numpy or pyarrow."""

from __future__ import annotations

from typing import Literal

Measure = Literal["auto", "rrf", "student_ce", "ppl_ratio", "nll_gap", "kl"]
MixtureKind = Literal["ddk", "uniform", "proportional"]
DDK_ALPHA = 0.5
DDK_INTERVAL = 1000

__all__ = ["Measure", "MixtureKind", "DDK_ALPHA", "DDK_INTERVAL"]
