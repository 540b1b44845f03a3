"""Per-domain perplexity on the held-out slice of the data, for every model evaluated (the DDK picture).

Perplexity is token-weighted per domain: ``exp(Σ nll / Σ target tokens)`` over the domain's held-out
documents (the ``validation`` split of `distillkit.data`, the same split `score` and `train` hold
out with the same data options), computed by `distillkit.domains.domain_table` exactly as `score`
does. A domain without held-out documents falls back to its training rows (``heldout`` = False).
With a teacher, each model's row carries the teacher's perplexity and the ratio; with a baseline
(the student before training) each other model also gets ``gap_closed``: the fraction of the
baseline's log-perplexity gap to the teacher that it closes (1 = at the teacher, 0 = no better than
the baseline, < 0 = worse), ``(nll_base - nll) / (nll_base - nll_teacher)``; null where the baseline
is not worse than the teacher.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillkit.domains import domain_table
from distillkit.schemas import EVAL_DOMAIN_COLUMNS


def heldout_rows(table: pa.Table, limit: int | None = None) -> pa.Table:
    """Each domain's validation rows (its training rows if it has none), at most `limit` per domain."""
    parts = []
    for d in sorted(set(table.column("domain").to_pylist())):
        in_d = table.filter(pc.equal(table.column("domain"), d))
        val = in_d.filter(pc.equal(in_d.column("split"), "validation"))
        use = val if val.num_rows else in_d
        parts.append(use.slice(0, limit) if limit is not None else use)
    return pa.concat_tables(parts) if parts else table.slice(0, 0)


def sample_nll(engine, samples) -> np.ndarray:
    """Mean NLL (nats) over each sample's target tokens, from the engine's target log-probs."""
    scores = engine.score(samples.ids, 0)
    return np.array([-float(np.mean(sc.target_logprobs[st - 1 :])) for sc, st in zip(scores, samples.target_start)],
                    dtype=np.float64)


def sample_table(samples, nll: np.ndarray) -> pa.Table:
    """One model's per-sample NLLs (the resumable part written per model)."""
    return pa.table({
        "sample_id": pa.array(samples.sample_id, pa.string()),
        "domain": pa.array(samples.domain, pa.string()),
        "split": pa.array(samples.split, pa.string()),
        "num_tokens": pa.array([len(i) - s for i, s in zip(samples.ids, samples.target_start)], pa.int32()),
        "nll": pa.array(nll, pa.float64()),
    })


def overall_ppl(per_sample: pa.Table) -> tuple[float, int]:
    """Token-weighted perplexity over every scored sample, and the token count."""
    n = per_sample.column("num_tokens").to_numpy().astype(np.float64)
    nll = per_sample.column("nll").to_numpy()
    return math.exp(float(np.sum(nll * n) / n.sum())), int(n.sum())


def domains_table(
    per_model: Sequence[tuple[str, str, pa.Table]],
    teacher: int | None = None,
    baseline: int | None = None,
) -> pa.Table:
    """domains.arrow: per (model, domain) perplexity; `teacher` and `baseline` index into `per_model`.

    Each entry is (label, role, per-sample table from `sample_table`); all share one sample order.
    """
    ref = per_model[teacher][2] if teacher is not None else None
    tables = []
    base_nll = None
    for i, (label, role, t) in enumerate(per_model):
        s = pa.table({
            "sample_id": t.column("sample_id"), "domain": t.column("domain"), "split": t.column("split"),
            "num_tokens": t.column("num_tokens"),
            "teacher_nll": (ref if ref is not None else t).column("nll"), "student_nll": t.column("nll"),
        })
        d = domain_table(s)
        tables.append((label, role, d))
        if i == baseline:
            base_nll = np.asarray(d.column("student_nll").to_numpy(), dtype=np.float64)
    cols: dict[str, list] = {k: [] for k in EVAL_DOMAIN_COLUMNS}
    for i, (label, role, d) in enumerate(tables):
        nll = d.column("student_nll").to_numpy()
        t_nll = d.column("teacher_nll").to_numpy()
        n = d.num_rows
        cols["model"] += [label] * n
        cols["role"] += [role] * n
        cols["domain"] += d.column("domain").to_pylist()
        cols["num_samples"] += d.column("num_samples").to_pylist()
        cols["num_tokens"] += d.column("num_tokens").to_pylist()
        cols["nll"] += nll.tolist()
        cols["ppl"] += d.column("student_ppl").to_pylist()
        cols["teacher_ppl"] += d.column("teacher_ppl").to_pylist() if ref is not None else [None] * n
        cols["ppl_ratio"] += d.column("ppl_ratio").to_pylist() if ref is not None else [None] * n
        cols["heldout"] += d.column("heldout").to_pylist()
        if ref is not None and base_nll is not None and i not in (baseline, teacher):
            gap = base_nll - t_nll
            cols["gap_closed"] += [float((b - x) / g) if g > 1e-9 else None for b, x, g in zip(base_nll, nll, gap)]
        else:
            cols["gap_closed"] += [None] * n
    return pa.table({k: pa.array(v, EVAL_DOMAIN_COLUMNS[k]) for k, v in cols.items()})
