"""Column schemas of the Arrow files that one stage writes and a later stage (or `show`) reads.

Writers and readers name the same dict, so a column renamed or retyped on one side cannot go unseen
on the other (`Artifact.table(name, columns)` / `check_columns` refuse a file that lacks them).
Declarations only: no computation, nothing heavier than pyarrow.

Not here: the top-k parts of ``score --top-k`` (``topk/part-*.arrow``), whose id and log-prob
types depend on the vocabulary and the chosen format: `distillkit.topk` defines and checks them; nor
the sampled parts of ``score --teacher-store sampled`` (``sampled/part-*.arrow``): `distillkit.sampled_store`.
"""

from __future__ import annotations

import pyarrow as pa


def select(columns: dict[str, pa.DataType], *names: str) -> dict[str, pa.DataType]:
    """The named columns of a schema: what one reader needs of a file that holds more."""
    return {n: columns[n] for n in names}


# ---------------------------------------------------------------- score

# samples.arrow: one row per scored sample; prompt/response data adds rouge_l (float32).
SAMPLE_COLUMNS = {
    "sample_id": pa.string(),
    "domain": pa.string(),
    "split": pa.string(),
    "num_tokens": pa.int32(),
    "teacher_nll": pa.float32(),
    "student_nll": pa.float32(),
    "student_ce": pa.float32(),
    "nll_gap": pa.float32(),
    "ppl_ratio": pa.float32(),
    "difficulty": pa.float32(),
}
# What a score chunk (chunks/part-*.arrow) holds before the derived measures are added; a merge
# reads these (and rouge_l) back from each shard's samples.arrow.
CHUNK_COLUMNS = ["sample_id", "domain", "split", "num_tokens", "teacher_nll", "student_nll"]

# domains.arrow: per-domain held-out perplexities. DOMAIN_COLUMNS is what readers rely on;
# DOMAIN_TABLE_COLUMNS is every column `distillkit.domains.domain_table` writes, in file order.
DOMAIN_COLUMNS = {
    "domain": pa.string(),
    "num_samples": pa.int64(),
    "num_tokens": pa.int64(),
    "teacher_ppl": pa.float64(),
    "student_ppl": pa.float64(),
    "ppl_ratio": pa.float64(),
}
DOMAIN_TABLE_COLUMNS = {
    "domain": pa.string(),
    "num_samples": pa.int64(),
    "num_tokens": pa.int64(),
    "teacher_nll": pa.float64(),
    "student_nll": pa.float64(),
    "teacher_ppl": pa.float64(),
    "student_ppl": pa.float64(),
    "ppl_ratio": pa.float64(),
    "heldout": pa.bool_(),
    "num_train_samples": pa.int64(),
}

# ---------------------------------------------------------------- plan

# What plan needs of samples.arrow besides its difficulty measure's columns (float32, see
# `distillkit.curriculum.MEASURE_COLUMNS`).
PLAN_SAMPLE_COLUMNS = select(SAMPLE_COLUMNS, "sample_id", "domain", "split", "num_tokens")

# curriculum.arrow: the training rows sorted by rank.
CURRICULUM_COLUMNS = {
    "sample_id": pa.string(),
    "domain": pa.string(),
    "rank": pa.int64(),
    "stage": pa.int32(),
    "difficulty": pa.float32(),
    "num_tokens": pa.int32(),
}
# mixture.arrow: per domain the initial weight beside the measured perplexities.
MIXTURE_COLUMNS = {
    "domain": pa.string(),
    "weight": pa.float64(),
    "teacher_ppl": pa.float64(),
    "student_ppl": pa.float64(),
    "ppl_ratio": pa.float64(),
    "num_samples": pa.int64(),
    "num_tokens": pa.int64(),
    "num_validation": pa.int64(),
    "heldout": pa.bool_(),
}
# What train reads of a plan (it needs no more, so plans with fewer extra columns still train).
TRAIN_CURRICULUM_COLUMNS = select(CURRICULUM_COLUMNS, "sample_id", "domain", "rank", "stage")
TRAIN_MIXTURE_COLUMNS = select(MIXTURE_COLUMNS, "domain", "weight", "teacher_ppl", "student_ppl")

# ---------------------------------------------------------------- eval

# results.arrow: one row per (model, task, metric).
RESULT_COLUMNS = {
    "model": pa.string(),
    "task": pa.string(),
    "metric": pa.string(),
    "value": pa.float64(),
    "stderr": pa.float64(),
    "num_samples": pa.int64(),
}
# domains.arrow of an eval: per (model, domain) held-out perplexity.
EVAL_DOMAIN_COLUMNS = {
    "model": pa.string(),
    "role": pa.string(),
    "domain": pa.string(),
    "num_samples": pa.int64(),
    "num_tokens": pa.int64(),
    "nll": pa.float64(),
    "ppl": pa.float64(),
    "teacher_ppl": pa.float64(),
    "ppl_ratio": pa.float64(),
    "gap_closed": pa.float64(),
    "heldout": pa.bool_(),
}
# generation.arrow (without its leading `model` column) and each model's generation part.
GENERATION_COLUMNS = {
    "seed": pa.int64(),
    "sample_id": pa.string(),
    "domain": pa.string(),
    "rouge_l": pa.float32(),
    "prediction": pa.string(),
    "num_tokens": pa.int32(),  # the answer's length in new tokens (EOS not counted)
    "stopped": pa.bool_(),  # it ended at EOS (else at gen_max_new_tokens)
    "exact_match": pa.float32(),  # final answer == the reference's (null: the reference has no checkable answer)
}

__all__ = [
    "select", "SAMPLE_COLUMNS", "CHUNK_COLUMNS", "DOMAIN_COLUMNS", "DOMAIN_TABLE_COLUMNS",
    "PLAN_SAMPLE_COLUMNS", "CURRICULUM_COLUMNS", "MIXTURE_COLUMNS", "TRAIN_CURRICULUM_COLUMNS",
    "TRAIN_MIXTURE_COLUMNS", "RESULT_COLUMNS", "EVAL_DOMAIN_COLUMNS", "GENERATION_COLUMNS",
]
