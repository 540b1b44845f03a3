"""Domain mixtures: DDK's discrepancy factor (Eq. 1), its smoothed update (Eq. 2), uniform, proportional.

DDK (arXiv 2407.16154), per domain i with held-out perplexities ppl_S[i] (student), ppl_T[i] (teacher):

- Eq. 1: ``r = softmax(ppl_S / ppl_T)`` — the domain sampling probabilities (`ddk_weights`).
- Eq. 2, every K steps: ``ψ[i] = r_t[i]·exp(ppl_S[i]/ppl_T[i])``,
  ``r_{t+1} = α·ψ/Σψ + (1 − α)/N`` (`ddk_update`; α = 0.5, K = 1000 in the paper).
  Without smoothing (the paper's "w/o FS" ablation) the factor is recomputed from Eq. 1 on the
  current perplexities, with no memory of r_t and no uniform floor.

All functions are pure and work in float64; ψ is normalised in log space, so large ratios cannot
overflow. The train stage reuses `ddk_update` at each re-measurement.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from distillkit.errors import DataError

from distillkit.choices import DDK_ALPHA, DDK_INTERVAL, MixtureKind  # noqa: F401  (re-exported)


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
    r = np.asarray(r_t, dtype=np.float64)
    if r.shape != ratio.shape:
        raise DataError(f"r_t has {r.size} domains but {ratio.size} perplexity pairs were given")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must be in [0, 1], got {alpha}")
    if (r < 0).any() or not np.isfinite(r).all() or r.sum() <= 0:
        raise DataError("r_t must be finite, non-negative probabilities")
    with np.errstate(divide="ignore"):
        log_psi = np.log(r) + ratio  # log(r_t · exp(ratio)): normalised without overflow
    return alpha * _softmax(log_psi) + (1.0 - alpha) / ratio.size


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
) -> np.ndarray:
    """The initial domain mixture of a plan."""
    if kind == "ddk":
        return ddk_weights(ppl_s, ppl_t)
    if kind == "uniform":
        return uniform_weights(len(num_tokens))
    if kind == "proportional":
        return proportional_weights(num_tokens)
    raise DataError(f"unknown mixture {kind!r}; choose ddk, uniform or proportional")


__all__ = ["MixtureKind", "DDK_ALPHA", "DDK_INTERVAL", "ddk_weights", "ddk_update", "uniform_weights",
           "proportional_weights", "mixture_weights"]
