"""Per-domain perplexity from per-sample NLLs: score's ``domains.arrow``, and eval's per-model rows.

Its own module because two stages build the same table: `scoring` (teacher vs student at score
time) and `evaluation.perplexity` (each evaluated model vs the teacher). Both must weigh tokens and
pick the held-out slice identically, and eval should not import the scoring machinery to do so.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillkit.schemas import DOMAIN_TABLE_COLUMNS


def domain_table(samples: pa.Table) -> pa.Table:
    """Token-weighted per-domain perplexities on the dev slice (decisions read it: plan's DDK weights, train's lr
    rule), else the held-out test slice of scores made without dev, else (no held-out rows) the training rows.

    `samples` needs sample_id, domain, split, num_tokens, teacher_nll and student_nll (mean nats per
    target token); the result has `schemas.DOMAIN_TABLE_COLUMNS`, one row per domain, sorted.
    """
    out: dict[str, list] = {k: [] for k in DOMAIN_TABLE_COLUMNS}
    domains = sorted(set(samples.column("domain").to_pylist()))
    for d in domains:
        in_d = samples.filter(pc.equal(samples.column("domain"), d))
        val = in_d.filter(pc.not_equal(in_d.column("split"), "train"))  # test and dev rows
        dev = in_d.filter(pc.equal(in_d.column("split"), "dev"))
        heldout = val.num_rows > 0
        # DDK's starting weights and the lr rule decide from this table: the dev rows where there are any.
        use = dev if dev.num_rows else val if heldout else in_d
        n = use.column("num_tokens").to_numpy().astype(np.float64)
        t = float(np.sum(use.column("teacher_nll").to_numpy() * n) / n.sum())
        s = float(np.sum(use.column("student_nll").to_numpy() * n) / n.sum())
        out["domain"].append(d)
        out["num_samples"].append(use.num_rows)
        out["num_tokens"].append(int(n.sum()))
        out["teacher_nll"].append(t)
        out["student_nll"].append(s)
        out["teacher_ppl"].append(math.exp(t))
        out["student_ppl"].append(math.exp(s))
        out["ppl_ratio"].append(math.exp(s - t))
        out["heldout"].append(heldout)
        out["num_train_samples"].append(in_d.num_rows - val.num_rows)
    return pa.table({k: pa.array(v, DOMAIN_TABLE_COLUMNS[k]) for k, v in out.items()})


__all__ = ["domain_table"]
