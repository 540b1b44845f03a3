"""Means, 95 % confidence intervals, paired differences and the smallest detectable effect.

What `distillkit study` reports, in plain formulas (n values x_1..x_n; t_q(df) the Student-t quantile):

- mean ± CI: x̄ ± t_{0.975}(n−1) · s/√n, s the sample standard deviation (ddof 1). n = 1 has no CI.
- paired difference of an arm to the baseline: d_i = arm_i − base_i over the units both have (training
  seeds: same data, same evaluation prompts; or evaluation prompts within the runs), then mean ± CI of d.
- verdict at 95 %: "better" when the CI of d lies wholly on the good side of 0 (above for ROUGE-L, below
  for perplexity), "worse" when wholly on the other, else "no difference detected".
- smallest detectable effect (two-sided α = 0.05, power 0.8): the true mean difference δ at which the paired
  t-test on n differences rejects four times in five, given the observed spread s_d: power(δ) =
  P(|T'| > t_{0.975}(n−1)) with T' noncentral t (n−1 degrees of freedom, noncentrality δ·√n/s_d), solved for
  power 0.8. With 3 seeds s_d itself is an estimate from 3 values, so this is an estimate too; the sound
  statement about a published effect is whether it lies inside the CI of d. (Earlier versions used the
  normal-style shortcut (t_{0.975} + t_{0.8}) · s_d/√n, which is close for large n and too small for n = 3.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

Verdict = Literal["better", "worse", "no difference detected", "too few runs"]


def t_quantile(q: float, df: int) -> float:
    """The q quantile of Student's t with df degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(q, df))


@dataclass(frozen=True)
class Estimate:
    """A mean over n units with its 95 % CI (lo, hi are NaN for n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2

    def to_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n, "sd": self.sd}


def mean_ci(xs: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean with its two-sided t confidence interval."""
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci of no values")
    m = math.fsum(xs) / n
    if n < 2:
        return Estimate(m, math.nan, math.nan, n, math.nan)
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))
    h = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Estimate(m, m - h, m + h, n, sd)


def paired(arm: Mapping, base: Mapping, level: float = 0.95) -> Estimate | None:
    """Mean ± CI of arm[u] − base[u] over the units u both have (None when they share none)."""
    common = sorted(set(arm) & set(base), key=str)
    if not common:
        return None
    return mean_ci([arm[u] - base[u] for u in common], level)


def t_test_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample (paired) t-test on n values at standardised effect δ/s (Cohen's d)."""
    from scipy.stats import nct

    df, nc = n - 1, effect * math.sqrt(n)
    crit = t_quantile(1 - alpha / 2, df)
    p = float(nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc))
    if math.isfinite(p):
        return p
    # scipy's noncentral t fails (NaN) far in the tail at small df: the same probability as an integral over
    # the chi-square V of T' = (Z + nc) / sqrt(V / df).
    from scipy.integrate import quad
    from scipy.stats import chi2, norm

    def at(v: float) -> float:
        s = crit * math.sqrt(v / df)
        return (norm.sf(s - nc) + norm.cdf(-s - nc)) * chi2.pdf(v, df)

    return float(min(1.0, quad(at, 0.0, math.inf, limit=200)[0]))


def detectable(d: Estimate, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true mean difference found at two-sided `alpha` with probability `power` (NaN for n < 2):
    the noncentral-t solution of `t_test_power` = power, times the observed sd of the differences."""
    if d.n < 2 or math.isnan(d.sd):
        return math.nan
    if d.sd == 0:
        return 0.0
    from scipy.optimize import brentq

    hi = 1.0
    while t_test_power(hi, d.n, alpha) < power:
        hi *= 2
    return float(brentq(lambda e: t_test_power(e, d.n, alpha) - power, 0.0, hi, xtol=1e-10)) * d.sd


def verdict(d: Estimate | None, higher_is_better: bool) -> Verdict:
    if d is None or d.n < 2 or math.isnan(d.lo):
        return "too few runs"
    if d.lo > 0:
        return "better" if higher_is_better else "worse"
    if d.hi < 0:
        return "worse" if higher_is_better else "better"
    return "no difference detected"


__all__ = ["Estimate", "Verdict", "mean_ci", "paired", "detectable", "t_test_power", "verdict", "t_quantile"]
