"""POCL difficulty measures: ROUGE-L of the student's greedy answer, student CE, and their fusion.

Reciprocal rank fusion (METHODS.md): rank ROUGE-L descending and CE ascending
(rank 1 = easiest) and score ``s_i = 1/(k + rank_rouge) + 1/(k + rank_ce)``,
k = 60; higher s = easier. distillkit stores ``difficulty = 1 - s·(k+1)/2``,
which is 0 for a sample ranked easiest by both measures and grows towards 1
with hardness (higher = harder, as every difficulty column).
Ties are broken by sample id so the ranking is deterministic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RRF_K = 60


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F-measure per pair (rouge_score, use_stemmer=True, as POCL)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)], dtype=np.float32)


def ranks(values: np.ndarray, ids: Sequence[str], descending: bool = False) -> np.ndarray:
    """1-based ranks (rank 1 first in the given direction), ties broken by id."""
    v = np.asarray(values, dtype=np.float64)
    key = -v if descending else v
    # lexsort: last key is primary
    order = np.lexsort((np.asarray(ids, dtype=object).astype(str), key))
    r = np.empty(len(v), dtype=np.int64)
    r[order] = np.arange(1, len(v) + 1)
    return r


def rrf_scores(rouge: np.ndarray, ce: np.ndarray, ids: Sequence[str], k: int = RRF_K) -> np.ndarray:
    """POCL's reciprocal-rank-fusion score: higher = easier."""
    return 1.0 / (k + ranks(rouge, ids, descending=True)) + 1.0 / (k + ranks(ce, ids, descending=False))


def rrf_difficulty(rouge: np.ndarray, ce: np.ndarray, ids: Sequence[str], k: int = RRF_K) -> np.ndarray:
    """RRF turned into a difficulty in [0, 1): 0 = easiest by both measures."""
    return (1.0 - rrf_scores(rouge, ce, ids, k) * (k + 1) / 2.0).astype(np.float32)
