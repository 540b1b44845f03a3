"""POCL curriculum: difficulty measures, per-domain stratified ranking, cumulative stages, schedule.

Pure, vectorised functions on pyarrow/numpy (a million samples take a few seconds). The plan
stage feeds them the *training* rows of a score artifact; the validation rows stay out.

Measures (higher = harder; ties broken by sample id, so every ordering is deterministic):

- ``rrf`` — POCL: rank ROUGE-L descending and student CE ascending over all training samples
  (rank 1 = easiest), fuse ``s = 1/(k + rank_rouge) + 1/(k + rank_ce)`` with k = 60, and store
  ``1 − s·(k+1)/2`` (0 = easiest by both), the same definition as `distillkit.difficulty`.
- ``student_ce`` — the student's mean token cross-entropy (POCL's measure for plain text).
- ``ppl_ratio`` — per-sample student/teacher perplexity ratio ``exp(student_nll − teacher_nll)``.
- ``nll_gap`` — ``student_nll − teacher_nll``: the teacher–student gap in nats per token.
  (Same order as ``ppl_ratio``; kept because it is additive and reads better in plots.)
NaN values sort last (hardest).

Stratification: samples are ranked *within their domain*; stage s (0-based) of S holds the easiest
``ceil((s+1)·n_d/S)`` samples of every domain d (so stage 0 has at least one sample of each
domain and stage S−1 holds everything). A sample's ``stage`` is therefore ``floor(j·S/n_d)`` for its
0-based position j in its domain. The global ``rank`` orders by (stage, difficulty, sample id), so
the pool of stage s is exactly ranks ``[0, pool_size(s))`` and, equivalently, rows with stage <= s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillkit.difficulty import RRF_K
from distillkit.errors import ConfigError, DataError

from distillkit.choices import Measure  # noqa: E402,F401  (re-exported)

# measure -> score columns it needs
MEASURE_COLUMNS: dict[str, tuple[str, ...]] = {
    "rrf": ("rouge_l", "student_ce"),
    "student_ce": ("student_ce",),
    "ppl_ratio": ("ppl_ratio",),
    "nll_gap": ("nll_gap",),
}
MEASURE_HELP = {
    "rrf": "POCL: ROUGE-L and student CE fused by reciprocal rank fusion",
    "student_ce": "student mean token cross-entropy",
    "ppl_ratio": "student/teacher perplexity ratio per sample",
    "nll_gap": "student NLL − teacher NLL per token (teacher–student gap)",
}


def default_measure(columns: Sequence[str]) -> str:
    """POCL's choice: RRF when the scores carry ROUGE-L (instruction data), else student CE."""
    return "rrf" if "rouge_l" in columns else "student_ce"


def resolve_measure(name: str, columns: Sequence[str]) -> str:
    """Turn ``auto`` into the default and refuse a measure these scores cannot give."""
    if name == "auto":
        return default_measure(columns)
    if name == "kl":
        raise ConfigError(
            "measure 'kl' needs a full-distribution teacher-student KL per sample, which score artifacts do not "
            "carry yet; use measure = 'nll_gap' (student_nll - teacher_nll) or 'ppl_ratio' for the teacher-student gap"
        )
    if name not in MEASURE_COLUMNS:
        raise ConfigError(f"unknown measure {name!r}; choose one of: auto, {', '.join(MEASURE_COLUMNS)}")
    missing = [c for c in MEASURE_COLUMNS[name] if c not in columns]
    if missing:
        hint = " (ROUGE-L is only scored for prompt/response data)" if "rouge_l" in missing else ""
        usable = [m for m, cols in MEASURE_COLUMNS.items() if all(c in columns for c in cols)]
        raise ConfigError(
            f"measure {name!r} needs column(s) {', '.join(missing)} that these scores lack{hint}; "
            f"usable measures: {', '.join(usable) or 'none'}"
        )
    return name


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each id's position in sorted (code point) order, as int64: a fast stand-in for the strings
    when breaking ties. Raises `DataError` on a repeated id."""
    order = pc.sort_indices(ids).to_numpy()
    n = len(order)
    if n > 1:
        s = pc.take(ids, pa.array(order))
        s = s.combine_chunks() if isinstance(s, pa.ChunkedArray) else s
        dup = pc.equal(s.slice(1), s.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        if dup.any():
            first = s[int(np.argmax(dup))].as_py()
            raise DataError(f"sample_id {first!r} occurs more than once ({int(dup.sum())} repeats); the scores are not one data set")
    key = np.empty(n, dtype=np.int64)
    key[order] = np.arange(n, dtype=np.int64)
    return key


def ranks(values: np.ndarray, id_key: np.ndarray, descending: bool = False) -> np.ndarray:
    """1-based ranks, ties broken by id: `distillkit.difficulty.ranks` with integer id keys."""
    v = np.asarray(values, dtype=np.float64)
    order = np.lexsort((id_key, -v if descending else v))
    r = np.empty(len(v), dtype=np.int64)
    r[order] = np.arange(1, len(v) + 1, dtype=np.int64)
    return r


def rrf_difficulty(rouge: np.ndarray, ce: np.ndarray, id_key: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """POCL's reciprocal rank fusion as a difficulty (float64): ``1 − s·(k+1)/2``, 0 = easiest."""
    s = 1.0 / (k + ranks(rouge, id_key, descending=True)) + 1.0 / (k + ranks(ce, id_key))
    return 1.0 - s * (k + 1) / 2.0


def measure_values(table: pa.Table, measure: str, id_key: np.ndarray, rrf_k: int = RRF_K) -> np.ndarray:
    """The difficulty of every row under `measure` (float64, higher = harder)."""

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy().astype(np.float64)

    if measure == "rrf":
        return rrf_difficulty(col("rouge_l"), col("student_ce"), id_key, rrf_k)
    if measure in MEASURE_COLUMNS:
        return col(MEASURE_COLUMNS[measure][0])
    raise ConfigError(f"unknown measure {measure!r}")


def domain_codes(domains: pa.Array | pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Sorted domain names and each row's index into them (int64)."""
    names = sorted(pc.unique(domains).to_pylist())
    codes = pc.index_in(domains, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)
    return names, codes.astype(np.int64)


def stratify(codes: np.ndarray, values: np.ndarray, id_key: np.ndarray, num_stages: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain stratified stages and the global rank.

    Returns ``stage`` (int32, the first stage whose pool holds the row) and ``rank`` (int64,
    0 = easiest; ordered by stage, then difficulty, then id).
    """
    if num_stages < 1:
        raise ConfigError(f"stages must be >= 1, got {num_stages}")
    n = len(codes)
    v = np.asarray(values, dtype=np.float64)
    within = np.lexsort((id_key, v, codes))  # by domain, then easy -> hard, then id
    counts = np.bincount(codes, minlength=int(codes.max()) + 1 if n else 0)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.arange(n, dtype=np.int64) - np.repeat(starts, counts)  # 0-based position in its domain
    stage = np.empty(n, dtype=np.int32)
    stage[within] = (pos * num_stages) // counts[codes[within]]
    order = np.lexsort((id_key, v, stage))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    return stage, rank


def pool_counts(codes: np.ndarray, stage: np.ndarray, num_domains: int, num_stages: int) -> np.ndarray:
    """``[S, D]`` samples of each domain in each stage's (cumulative) pool."""
    new = np.zeros((num_stages, num_domains), dtype=np.int64)
    np.add.at(new, (stage.astype(np.int64), codes), 1)
    return np.cumsum(new, axis=0)


@dataclass(frozen=True, slots=True)
class StageSchedule:
    stage: int
    fraction: float  # nominal share of each domain in the pool: (s+1)/S
    temperature: float
    kd_weight: float


def schedule(num_stages: int, t_start: float = 1.0, t_end: float = 2.0, kd_start: float = 0.7, kd_end: float = 1.0) -> list[StageSchedule]:
    """POCL's scheduler: ``T_s = T_start + (T_end − T_start)·s/(S−1)``, likewise λ_s.

    One stage (no curriculum) uses the start values.
    """
    if num_stages < 1:
        raise ConfigError(f"stages must be >= 1, got {num_stages}")
    out = []
    for s in range(num_stages):
        x = s / (num_stages - 1) if num_stages > 1 else 0.0
        # rounded so the manifest reads 0.8, not 0.7999999999999999
        out.append(StageSchedule(s, round((s + 1) / num_stages, 12), round(t_start + (t_end - t_start) * x, 12),
                                 round(kd_start + (kd_end - kd_start) * x, 12)))
    return out


@dataclass(frozen=True, slots=True)
class Curriculum:
    table: pa.Table  # `schemas.CURRICULUM_COLUMNS` (curriculum.arrow), sorted by rank
    domains: list[str]  # sorted
    pools: np.ndarray  # [S, D] cumulative pool counts
    pool_tokens: np.ndarray  # [S] target tokens in each pool
    measure: str


def build_curriculum(train: pa.Table, measure: str, num_stages: int, rrf_k: int = RRF_K) -> Curriculum:
    """Rank the training rows of a score table into `num_stages` stratified cumulative stages."""
    if train.num_rows == 0:
        raise DataError("no training samples to build a curriculum from")
    ids = train.column("sample_id")
    key = id_keys(ids)
    values = measure_values(train, measure, key, rrf_k)
    names, codes = domain_codes(train.column("domain"))
    stage, rank = stratify(codes, values, key, num_stages)
    order = np.empty_like(rank)
    order[rank] = np.arange(len(rank), dtype=np.int64)
    idx = pa.array(order)
    tokens = train.column("num_tokens").to_numpy().astype(np.int64)
    table = pa.table(
        {
            "sample_id": pc.take(ids, idx),
            "domain": pc.take(train.column("domain"), idx),
            "rank": pa.array(np.arange(len(rank), dtype=np.int64)),
            "stage": pa.array(stage[order]),
            "difficulty": pa.array(values[order].astype(np.float32)),
            "num_tokens": pa.array(tokens[order].astype(np.int32)),
        }
    ).combine_chunks()
    pools = pool_counts(codes, stage, len(names), num_stages)
    pool_tokens = np.cumsum(np.bincount(stage, weights=tokens, minlength=num_stages)).astype(np.int64)
    return Curriculum(table, names, pools, pool_tokens, measure)


def full_pools(c: Curriculum, num_stages: int) -> Curriculum:
    """`c` with every sample in stage 0, so that each of the `num_stages` stages trains on all of them (the stage
    schedule without the easy-to-hard pools); the rank order is kept but no longer decides what is drawn."""
    import dataclasses

    n = c.table.num_rows
    table = c.table.set_column(c.table.schema.get_field_index("stage"), "stage", pa.array(np.zeros(n, np.int32)))
    pools = np.repeat(c.pools[-1:], num_stages, axis=0)
    pool_tokens = np.full(num_stages, int(c.pool_tokens[-1]), dtype=np.int64)
    return dataclasses.replace(c, table=table, pools=pools, pool_tokens=pool_tokens)


__all__ = [
    "full_pools", "Measure", "MEASURE_COLUMNS", "MEASURE_HELP", "default_measure", "resolve_measure", "id_keys",
    "ranks", "rrf_difficulty", "measure_values", "domain_codes", "stratify", "pool_counts", "StageSchedule",
    "schedule", "Curriculum", "build_curriculum",
]
