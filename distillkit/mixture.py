"""Domain mixtures: DDK's discrepancy factor (Eq. 1), its smoothed update (Eq. 2), uniform, proportional.

DDK (arXiv 2407.16154), per domain i with held-out perplexities ppl_S[i] (student), ppl_T[i] (teacher):

- Eq. 1: ``r = softmax(ppl_S / ppl_T)`` — the domain sampling probabilities (`ddk_weights`).
- Eq. 2, every K steps: ``ψ[i] = r_t[i]·exp(ppl_S[i]/ppl_T[i])``,
  ``r_{t+1} = α·ψ/Σψ + (1 − α)/N`` (`ddk_update`; α = 0.5, K = 1000 in the paper).
  Without smoothing (the paper's "w/o FS" ablation) the factor is recomputed from Eq. 1 on the
  current perplexities, with no memory of r_t and no uniform floor.

A variant for large gaps (``factor = "log-ratio"``, `log_ratio_weights` / `log_ratio_update`): the
paper's ratios sit at 1.2–1.8, where ``exp(ratio)`` is a mild re-weighting; for a freshly pruned student
they are 4–19 and Eq. 1 is nearly one-hot (0.94 on one domain of nine). The variant tempers the factor in
log space, ``f_i = exp(log(ratio_i)/τ) = ratio_i^(1/τ)``:

- weights ``r = softmax(log(ratio)/τ)``, i.e. ``r_i ∝ ratio_i^(1/τ)`` (τ = 1: proportional to the ratio);
- update ``ψ[i] = r_t[i]·ratio_i^(1/τ)``, ``r_{t+1} = α·ψ/Σψ + (1 − α)/N`` (the same α and uniform floor).

Its weights' max/min is ``(max ratio / min ratio)^(1/τ)`` instead of Eq. 1's ``exp(max − min)``.
`discrepancy_weights` / `discrepancy_update` pick Eq. 1/2 or the variant by factor.

All functions are pure and work in float64; ψ is normalised in log space (and the variant subtracts
the largest log-ratio before dividing by τ), so large ratios or a small τ cannot overflow. The train
stage reuses `discrepancy_update` at each re-measurement.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from distillkit.errors import DataError

from distillkit.choices import DDK_ALPHA, DDK_FACTOR, DDK_INTERVAL, DDK_TAU, DdkFactor, MixtureKind  # noqa: F401  (re-exported)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x)
    e = np.exp(z)
    return e / e.sum()


def _ratios(ppl_s: Sequence[float] | np.ndarray, ppl_t: Sequence[float] | np.ndarray) -> np.ndarray:
    s = np.asarray(ppl_s, dtype=np.float64)
    t = np.asarray(ppl_t, dtype=np.float64)
    if s.shape != t.shape or s.ndim != 1 or s.size == 0:
        raise DataError(f"need one student and one teacher perplexity per domain, got shapes {s.shape} and {t.shape}")
    bad = ~(np.isfinite(s) & np.isfinite(t) & (s > 0) & (t > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"perplexities must be finite and > 0; domain #{i} has student {s[i]}, teacher {t[i]}")
    return s / t


def ddk_weights(ppl_s: Sequence[float] | np.ndarray, ppl_t: Sequence[float] | np.ndarray) -> np.ndarray:
    """DDK Eq. 1: ``softmax(ppl_S / ppl_T)`` over domains (sums to 1)."""
    return _softmax(_ratios(ppl_s, ppl_t))


def ddk_update(
    r_t: Sequence[float] | np.ndarray,
    ppl_s: Sequence[float] | np.ndarray,
    ppl_t: Sequence[float] | np.ndarray,
    alpha: float = DDK_ALPHA,
    smoothing: bool = True,
) -> np.ndarray:
    """DDK Eq. 2: the next domain factor from the current one and freshly measured perplexities.

    ``smoothing=False`` returns Eq. 1 on the new perplexities (the paper's ablation).
    """
    ratio = _ratios(ppl_s, ppl_t)
    if not smoothing:
        return _softmax(ratio)
    r = _check_smoothing(r_t, ratio, alpha)
    with np.errstate(divide="ignore"):
        log_psi = np.log(r) + ratio  # log(r_t · exp(ratio)): normalised without overflow
    return alpha * _softmax(log_psi) + (1.0 - alpha) / ratio.size


def _check_smoothing(r_t: Sequence[float] | np.ndarray, ratio: np.ndarray, alpha: float) -> np.ndarray:
    r = np.asarray(r_t, dtype=np.float64)
    if r.shape != ratio.shape:
        raise DataError(f"r_t has {r.size} domains but {ratio.size} perplexity pairs were given")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must be in [0, 1], got {alpha}")
    if (r < 0).any() or not np.isfinite(r).all() or r.sum() <= 0:
        raise DataError("r_t must be finite, non-negative probabilities")
    return r


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not (np.isfinite(tau) and tau > 0):
        raise DataError(f"ddk_tau must be a finite number > 0, got {tau}")
    return tau


def _tempered_log_ratio(ratio: np.ndarray, tau: float, support: np.ndarray | None = None) -> np.ndarray:
    """``(log ratio − max log ratio)/τ``: the variant's log-factor up to a constant (which softmax drops).

    The maximum is taken over `support` (the domains with r_t > 0; default all), so the best of those
    is 0 and the others <= 0: log ψ stays finite there however small τ is.
    """
    z = np.log(ratio)
    top = z.max() if support is None else z[support].max()
    # a tiny τ sends the lower ratios to -inf (weight 0); only domains outside `support` can reach +inf
    with np.errstate(over="ignore"):
        return (z - top) / tau


def log_ratio_weights(ppl_s: Sequence[float] | np.ndarray, ppl_t: Sequence[float] | np.ndarray,
                      tau: float = DDK_TAU) -> np.ndarray:
    """The large-gap variant of Eq. 1: ``softmax(log(ppl_S/ppl_T)/τ)``, i.e. ``r_i ∝ ratio_i^(1/τ)`` (sums to 1)."""
    ratio = _ratios(ppl_s, ppl_t)
    return _softmax(_tempered_log_ratio(ratio, _check_tau(tau)))


def log_ratio_update(
    r_t: Sequence[float] | np.ndarray,
    ppl_s: Sequence[float] | np.ndarray,
    ppl_t: Sequence[float] | np.ndarray,
    alpha: float = DDK_ALPHA,
    smoothing: bool = True,
    tau: float = DDK_TAU,
) -> np.ndarray:
    """The large-gap variant of Eq. 2: ``ψ[i] = r_t[i]·ratio_i^(1/τ)``, ``r_{t+1} = α·ψ/Σψ + (1 − α)/N``.

    ``smoothing=False`` returns `log_ratio_weights` on the new perplexities (no memory, no floor).
    """
    ratio = _ratios(ppl_s, ppl_t)
    tau = _check_tau(tau)
    if not smoothing:
        return _softmax(_tempered_log_ratio(ratio, tau))
    r = _check_smoothing(r_t, ratio, alpha)
    live = r > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # r_t = 0 stays 0, whatever its ratio
        log_psi = np.where(live, np.log(r) + _tempered_log_ratio(ratio, tau, live), -np.inf)
    return alpha * _softmax(log_psi) + (1.0 - alpha) / ratio.size


def discrepancy_weights(ppl_s: Sequence[float] | np.ndarray, ppl_t: Sequence[float] | np.ndarray,
                        factor: DdkFactor = DDK_FACTOR, tau: float = DDK_TAU) -> np.ndarray:
    """DDK's initial domain factor: Eq. 1 (``factor = "ratio"``; τ unused) or the log-ratio variant."""
    if factor == "ratio":
        return ddk_weights(ppl_s, ppl_t)
    if factor == "log-ratio":
        return log_ratio_weights(ppl_s, ppl_t, tau)
    raise DataError(f"unknown ddk_factor {factor!r}; choose ratio or log-ratio")


def discrepancy_update(
    r_t: Sequence[float] | np.ndarray,
    ppl_s: Sequence[float] | np.ndarray,
    ppl_t: Sequence[float] | np.ndarray,
    alpha: float = DDK_ALPHA,
    smoothing: bool = True,
    factor: DdkFactor = DDK_FACTOR,
    tau: float = DDK_TAU,
) -> np.ndarray:
    """DDK's re-weighting: Eq. 2 (``factor = "ratio"``; τ unused) or the log-ratio variant."""
    if factor == "ratio":
        return ddk_update(r_t, ppl_s, ppl_t, alpha=alpha, smoothing=smoothing)
    if factor == "log-ratio":
        return log_ratio_update(r_t, ppl_s, ppl_t, alpha=alpha, smoothing=smoothing, tau=tau)
    raise DataError(f"unknown ddk_factor {factor!r}; choose ratio or log-ratio")


def uniform_weights(num_domains: int) -> np.ndarray:
    if num_domains < 1:
        raise DataError("a mixture needs at least one domain")
    return np.full(num_domains, 1.0 / num_domains)


def proportional_weights(num_tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Each domain's share of the (training) tokens: the natural mixture of the data."""
    n = np.asarray(num_tokens, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or (n < 0).any() or n.sum() <= 0:
        raise DataError(f"proportional mixture needs non-negative token counts with a positive total, got {n.tolist()}")
    return n / n.sum()


def mixture_weights(
    kind: MixtureKind,
    ppl_s: Sequence[float] | np.ndarray,
    ppl_t: Sequence[float] | np.ndarray,
    num_tokens: Sequence[int] | np.ndarray,
    factor: DdkFactor = DDK_FACTOR,
    tau: float = DDK_TAU,
) -> np.ndarray:
    """The initial domain mixture of a plan (`factor` and `tau` only matter for ``kind = "ddk"``)."""
    if kind == "ddk":
        return discrepancy_weights(ppl_s, ppl_t, factor, tau)
    if kind == "uniform":
        return uniform_weights(len(num_tokens))
    if kind == "proportional":
        return proportional_weights(num_tokens)
    raise DataError(f"unknown mixture {kind!r}; choose ddk, uniform or proportional")


__all__ = ["MixtureKind", "DdkFactor", "DDK_ALPHA", "DDK_INTERVAL", "DDK_FACTOR", "DDK_TAU", "ddk_weights", "ddk_update",
           "log_ratio_weights", "log_ratio_update", "discrepancy_weights", "discrepancy_update", "uniform_weights",
           "proportional_weights", "mixture_weights"]
