"""Wall time of `distillkit plan` on a synthetic score artifact of N rows (default 1,000,000).

Builds the score artifact with ArtifactWriter (9 domains, 10% held out; not timed), then times the
real command in a fresh subprocess — imports, reading and verifying the scores, ranking, writing —
for the text measure (student_ce) and, with ``--rouge``, for POCL's RRF (two extra rank passes).

    python bench/bench_plan.py                      # 1,000,000 rows, student_ce and rrf
    python bench/bench_plan.py --rows 200000 --plot # smaller, and with plan.png
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOMAINS = ("books", "chat", "code", "law", "math", "med", "news", "web", "wiki")


def synthetic_scores(out: Path, rows: int, rouge: bool, seed: int = 0) -> Path:
    from distillkit.artifacts import ArtifactWriter
    from distillkit.domains import domain_table

    rng = np.random.default_rng(seed)
    # skewed domain sizes, like real corpora
    p = rng.dirichlet(np.full(len(DOMAINS), 2.0))
    dom = np.sort(rng.choice(len(DOMAINS), rows, p=p))
    ids = np.char.mod("%016x", rng.integers(0, 2**62, rows, dtype=np.int64)).astype(object)
    ids = np.char.add(ids.astype(str), np.char.mod("%07d", np.arange(rows)))  # unique
    hardness = rng.uniform(0.5, 1.5, len(DOMAINS))[dom]
    t = rng.gamma(4.0, 0.5, rows) + 0.5
    s = t + rng.gamma(2.0, 0.4, rows) * hardness
    split = np.where(rng.random(rows) < 0.1, "validation", "train")
    cols = {
        "sample_id": pa.array(ids, pa.string()),
        "domain": pa.array(np.array(DOMAINS)[dom], pa.string()),
        "split": pa.array(split, pa.string()),
        "num_tokens": pa.array(rng.integers(16, 1024, rows).astype(np.int32)),
        "teacher_nll": pa.array(t.astype(np.float32)),
        "student_nll": pa.array(s.astype(np.float32)),
        "student_ce": pa.array(s.astype(np.float32)),
        "nll_gap": pa.array((s - t).astype(np.float32)),
        "ppl_ratio": pa.array(np.exp(s - t).astype(np.float32)),
        "difficulty": pa.array(s.astype(np.float32)),
    }
    if rouge:
        cols["rouge_l"] = pa.array(np.clip(rng.beta(2, 3, rows) - 0.05 * (s - t), 0, 1).round(3).astype(np.float32))
    samples = pa.table(cols)
    w = ArtifactWriter(out, "score", {"synthetic": True, "rows": rows, "rouge": rouge, "seed": seed})
    w.write("samples.arrow", samples)
    w.write("domains.arrow", domain_table(samples))
    w.finish({"samples": rows}, extra={"shard": [0, 1], "format": "instruction" if rouge else "text"})
    return out


def time_cli(scores: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "distillkit.cli.main", "plan", "--scores", str(scores), "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"plan failed ({res.returncode}): {res.stderr.strip()}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--plot", action="store_true", help="also time a run with --plot")
    ap.add_argument("--no-rouge", action="store_true", help="skip the rrf case")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_plan_") as tmp:
        tmp = Path(tmp)
        cases = [("student_ce", False)] + ([] if args.no_rouge else [("rrf", True)])
        print(f"plan on {args.rows:,} synthetic score rows ({len(DOMAINS)} domains, ~10% held out); CPU cores: {os.cpu_count()}")
        for measure, rouge in cases:
            t = time.perf_counter()
            scores = synthetic_scores(tmp / f"score_{measure}", args.rows, rouge)
            build = time.perf_counter() - t
            wall = time_cli(scores, tmp / f"plan_{measure}", ["--measure", measure])
            from distillkit.artifacts import read_artifact

            m = read_artifact(tmp / f"plan_{measure}", "plan").manifest
            print(f"  {measure:<10} distillkit plan: {wall:6.2f} s wall (in-process {m['figures']['wall_s']:.2f} s; "
                  f"{m['figures']['train_samples']:,} train rows; scores built in {build:.1f} s, not timed)")
            if args.plot:
                wall = time_cli(scores, tmp / f"plot_{measure}", ["--measure", measure, "--plot"])
                print(f"  {measure:<10} with --plot:     {wall:6.2f} s wall")


if __name__ == "__main__":
    main()
