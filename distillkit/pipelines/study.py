"""`distillkit study RECIPE`: arms x seeds at one budget, each (arm, seed) a plan -> train -> eval chain, then a report.

Order of work: the recipe and every config it implies are resolved and checked first (an unknown key, two
identical arms, a budget that differs, a score artifact without what the evaluation or an arm needs: exit 2,
nothing written); then one plan per arm; then the runs, seed-major, each one

    train   {out}/runs/<arm>-s<seed>/train   (resumed from its checkpoint if a previous study was killed)
    eval    {out}/runs/<arm>-s<seed>/eval    (ROUGE-L of sampled answers, held-out perplexity, tasks)
    result  {results}/<arm>-s<seed>.json     (small; commit it)

and, with ``[eval] references = true``, one evaluation of the teacher and the initial student
({results}/reference.json), queued last: it is context, not part of any paired comparison. A run whose result file exists for the same setting is skipped, even when its
run directory is gone (another machine, a later session); a result file made with another setting is
refused. ``jobs = 2`` runs two runs side by side, each in its own process with ``threads`` torch threads;
the workers share the queue through lock files, and a lock left by a killed worker is taken over. The
report ({results}/report.md + study.png) is rewritten from the result files at the end
(`--report-only` rewrites it without running anything).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from distillkit.errors import ConfigError, DistillkitError
from distillkit.study import RunState, StudyRecipe, format_states  # noqa: F401  (--status's record and table)

KIND = "study"
REFERENCE = "reference"
# Keys of a score config that say where or how fast it ran, not what it measured.
_SCORE_NOT_IDENTITY = ("out", "teacher", "student", "engine", "batch_tokens", "chunk_size", "shard")
# What an arm's own score artifact may change against the study's: the stored teacher signal, nothing else.
_STORE_KEYS = ("top_k", "topk_format", "teacher_store", "sample_count", "sample_scheme", "sample_seed")


@dataclass(frozen=True)
class StudyOptions:
    """What `distillkit study` takes besides the recipe; None = the recipe's value."""

    recipe: str
    out: str | None = None
    results: str | None = None
    jobs: int | None = None
    threads: int | None = None
    report_only: bool = False
    worker: bool = False
    status: bool = False


@dataclass(frozen=True)
class RunJob:
    id: str
    arm: str | None  # None for the reference evaluation
    seed: int | None
    train: Any  # TrainConfig (None for the reference)
    eval: Any  # EvalConfig
    fingerprint: str


@dataclass
class StudyPlan:
    recipe: StudyRecipe
    plans: dict[str, Any]  # arm -> PlanConfig
    jobs: list[RunJob]
    score_format: str
    setting: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StudyResult:
    results: Path
    report: Path | None
    ran: list[str]
    skipped: list[str]
    status: list[RunState] | None = None


def find_recipe(spec: str) -> Path:
    from distillkit.pipelines.recipe import RECIPES

    p = Path(spec)
    if p.is_file():
        return p
    shipped = RECIPES / f"{spec}.toml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"study recipe {spec!r} not found: pass a TOML file "
                      f"(shipped: {', '.join(sorted(x.stem for x in RECIPES.glob('study-*.toml'))) or 'none'})")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(rec: StudyRecipe) -> StudyPlan:
    """Resolve every config of the study and check the inputs; raises ConfigError before anything is written."""
    from distillkit.artifacts import read_artifact
    from distillkit.config import resolve, to_dict
    from distillkit.errors import ArtifactError
    from distillkit.pipelines.eval import EvalConfig
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.train import TrainConfig
    from distillkit.records import ScoreRecord

    try:
        score = read_artifact(rec.scores, "score")
    except ArtifactError as e:
        raise ConfigError(f"scores {rec.scores}: {e} (score the data first: distillkit score ... --out {rec.scores})") from None
    srec = ScoreRecord.from_manifest(score.manifest, f"{rec.scores}/manifest.json")
    if srec.is_shard:
        raise ConfigError(f"scores {rec.scores} is shard {srec.shard[0]}/{srec.shard[1]}: merge the shards first (distillkit score --merge)")
    teacher = rec.teacher or srec.teacher_dir
    student = rec.student or srec.student_dir
    splits = set(score.table("samples.arrow").column("split").to_pylist())
    if "validation" not in splits:
        raise ConfigError(f"scores {rec.scores} has no held-out (validation) samples to evaluate on: rescore with --val-size or --val-fraction")
    if rec.eval.get("rouge") == "on" and srec.format != "instruction":
        raise ConfigError(f"[eval] rouge = 'on' needs prompt/response data, but {rec.scores} scored plain text: "
                          "score an instruction data set or set rouge = 'off'")
    score_id = {k: v for k, v in score.config.items() if k not in _SCORE_NOT_IDENTITY}

    def build(cls, opts: dict[str, Any], where: str):
        try:
            return resolve(cls, options=opts)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    arm_scores = {name: _arm_scores(rec, name, arm.scores, score) for name, arm in rec.arms.items() if arm.scores}

    plans: dict[str, Any] = {}
    given: dict[str, dict[str, Any]] = {}
    for name, arm in rec.arms.items():
        base_opts = {**rec.plan, **arm.plan, "scores": str(arm.scores or rec.scores), "out": str(rec.root / "plans" / name)}
        first = build(PlanConfig, base_opts, f"arm {name!r} [plan]")
        stages = first.stages if first.curriculum else 1
        if rec.budget.unit == "steps" and int(rec.budget.value) % stages:
            raise ConfigError(f"budget steps = {int(rec.budget.value)} does not split into arm {name!r}'s {stages} stages: "
                              f"use a multiple of {stages}")
        length = rec.budget.stage_length(stages, full_pools=first.pools == "full")
        plans[name] = build(PlanConfig, {**base_opts, "stage_unit": rec.budget.unit,
                                         "stage_length": int(length) if rec.budget.unit == "steps" else length},
                            f"arm {name!r} [plan]")
        given[name] = {"plan": {**rec.plan, **arm.plan}, "train": {**rec.train, **arm.train}}
        if name in arm_scores:  # only then: the fingerprints of arms on the study's scores stay what they were
            given[name]["scores"] = arm_scores[name][1]

    eval_given = dict(rec.eval)
    jobs: list[RunJob] = []
    resolved: dict[str, dict[str, Any]] = {}
    for arm, seed in rec.run_ids():
        run_dir = rec.root / "runs" / f"{arm}-s{seed}"
        opts = {**rec.train, **rec.arms[arm].train, "plan": str(rec.root / "plans" / arm), "out": str(run_dir / "train"),
                "seed": seed, "teacher": teacher, "student": student}
        if rec.budget.unit == "steps":
            opts["steps"] = int(rec.budget.value)
        tcfg = build(TrainConfig, opts, f"arm {arm!r} [train]")
        a_score, a_rec = arm_scores[arm][0] if arm in arm_scores else (score, srec)
        if tcfg.teacher_mode == "offline" and a_rec.topk is None and not a_score.files("sampled/"):
            raise ConfigError(f"arm {arm!r} trains from the offline teacher but {a_score.path} stores no teacher top-k "
                              "or samples: rescore with --top-k 64 (or --teacher-store sampled), or set teacher_mode = 'online'")
        ecfg = build(EvalConfig, {"plot": False, **eval_given, "models": (f"{arm}={run_dir / 'train' / 'student'}",),
                                  "data": str(rec.scores), "out": str(run_dir / "eval")}, "[eval]")
        if seed == rec.seeds[0]:
            resolved[arm] = {"plan": _identity(to_dict(plans[arm]), ("out",)),
                             "train": _identity(to_dict(tcfg), ("out", "plan", "seed"))}
        fp = _sha({"score": score_id, "budget": [rec.budget.unit, rec.budget.value], "seed": seed, **given[arm],
                   "eval": eval_given})
        jobs.append(RunJob(f"{arm}-s{seed}", arm, seed, tcfg, ecfg, fp))
    _refuse_identical(resolved)
    if rec.references:
        ecfg = build(EvalConfig, {"plot": False, **eval_given, "models": (f"initial={student}",), "teacher": f"teacher={teacher}",
                                  "data": str(rec.scores), "out": str(rec.root / "runs" / REFERENCE / "eval")}, "[eval]")
        jobs.append(RunJob(REFERENCE, None, None, None, ecfg, _sha({"score": score_id, "eval": eval_given})))
    if rec.precondition is not None:  # the reference and the precondition's runs first: they gate the others
        gate = {REFERENCE} | {f"{rec.precondition.arm}-s{x}" for x in rec.precondition.seeds}
        jobs = [j for j in jobs if j.id in gate] + [j for j in jobs if j.id not in gate]
    setting = {"name": rec.name, "score": score_id, "budget": {"unit": rec.budget.unit, "value": rec.budget.value},
               "baseline": rec.baseline, "eval": eval_given, "plan": rec.plan, "train": rec.train,
               "arms": {a: {"plan": x.plan, "train": x.train} | ({"scores": arm_scores[a][1]} if a in arm_scores else {})
                        for a, x in rec.arms.items()}}
    return StudyPlan(rec, plans, jobs, srec.format, setting)


def _arm_scores(rec: StudyRecipe, name: str, path: Path, study_score) -> tuple[tuple[Any, Any], dict[str, Any]]:
    """An arm's own score artifact, checked to hold the study's data, split, models and lengths (only the stored
    teacher signal may differ); returns ((artifact, record), its identity)."""
    from distillkit.artifacts import read_artifact
    from distillkit.errors import ArtifactError
    from distillkit.records import ScoreRecord

    try:
        art = read_artifact(path, "score")
    except ArtifactError as e:
        raise ConfigError(f"arm {name!r} scores {path}: {e} (score it first: distillkit score ... --out {path})") from None
    srec = ScoreRecord.from_manifest(art.manifest, f"{path}/manifest.json")
    if srec.is_shard:
        raise ConfigError(f"arm {name!r} scores {path} is shard {srec.shard[0]}/{srec.shard[1]}: merge the shards first")
    ident = {k: v for k, v in art.config.items() if k not in _SCORE_NOT_IDENTITY}
    study_ident = {k: v for k, v in study_score.config.items() if k not in _SCORE_NOT_IDENTITY}
    keys = (set(ident) | set(study_ident)) - set(_STORE_KEYS) - {"data"}  # the data: by its fingerprint, not its path
    diff = sorted(k for k in keys if ident.get(k) != study_ident.get(k))
    if diff:
        raise ConfigError(f"arm {name!r} scores {path} differ from the study's {rec.scores} in {', '.join(diff)}: an arm's "
                          "own scores may change only the stored teacher (top_k, teacher_store, ...); rescore with the study's settings")
    return (art, srec), ident


def _identity(d: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in drop}


def _refuse_identical(resolved: dict[str, dict[str, Any]]) -> None:
    names = list(resolved)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if resolved[a] == resolved[b]:
                raise ConfigError(f"arms {a!r} and {b!r} are identical (the same plan and train settings once defaults "
                                  "are filled in): remove one or make them differ")


# ---------------------------------------------------------------- budget check on the built plans

def check_budgets(sp: StudyPlan) -> dict[str, dict[str, float]]:
    """Sequences each arm trains on and the sample passes they make; differing budgets are refused."""
    from distillkit.artifacts import read_artifact
    from distillkit.records import PlanRecord
    from distillkit.training.schedule import plan_stages

    out: dict[str, dict[str, float]] = {}
    for job in sp.jobs:
        if job.arm is None or job.arm in out:
            continue
        art = read_artifact(job.train.plan, "plan")
        record = PlanRecord.from_manifest(art.manifest, f"{job.train.plan}/manifest.json")
        stages = plan_stages(record, job.train.batch_size, job.train.steps)
        seqs = sum((s.end - s.start) for s in stages) * job.train.batch_size
        pool = max(s.num_samples for s in stages)
        out[job.arm] = {"sequences": seqs, "training_samples": pool, "sample_passes": seqs / pool,
                        "stages": len(stages), "steps": stages[-1].end, "batch_size": job.train.batch_size}
    base = out[sp.recipe.baseline]
    for arm, b in out.items():
        slack = (b["stages"] + base["stages"]) * max(b["batch_size"], base["batch_size"])
        if abs(b["sequences"] - base["sequences"]) > slack:
            raise ConfigError(f"arm {arm!r} trains {b['sequences']:,} sequences ({b['sample_passes']:.2f} passes) but the "
                              f"baseline {sp.recipe.baseline!r} {base['sequences']:,} ({base['sample_passes']:.2f}): the budgets "
                              "differ; give every arm the same batch_size (the study's [budget] sets the length)")
    return out


# ---------------------------------------------------------------- the run


def run(opts: StudyOptions) -> StudyResult:
    from distillkit.progress import console
    from distillkit.study import read_study, write_json

    rec = read_study(find_recipe(opts.recipe), opts.out, opts.results)
    sp = prepare(rec)
    if opts.status:  # read only: nothing is written, not even study.json
        return StudyResult(rec.results, None, [], [], status=run_states(sp))
    if not opts.worker:  # the parent records the setting; its workers only run
        _record_setting(rec.results / "study.json", sp)
    if opts.report_only:
        return StudyResult(rec.results, _report(sp), [], [])
    jobs = opts.jobs or rec.jobs
    threads = opts.threads or rec.threads or max(1, (os.cpu_count() or 1) // jobs)
    if not opts.worker:
        _make_plans(sp)
        budgets = check_budgets(sp)
        write_json(rec.results / "budgets.json", budgets)
    pending = _pending(sp)
    skipped = [j.id for j in sp.jobs if j not in pending]
    if not opts.worker:
        console.print(f"[bold cyan]study {rec.name}[/]: {len(sp.recipe.arms)} arms × {len(rec.seeds)} seeds, budget "
                      f"{rec.budget.describe()}; {len(pending)} run(s) to do, {len(skipped)} finished "
                      f"(results in {rec.results})")
    try:
        if pending and jobs > 1 and not opts.worker:
            ran = _spawn_workers(rec, pending, jobs, threads)
        else:
            ran = _work(sp, pending, threads)
    except PreconditionFailed:
        if not opts.worker:
            _report(sp)  # the report shows the precondition's table and the runs it needed
        raise
    report = None if opts.worker else _report(sp)
    return StudyResult(rec.results, report, ran, skipped)


def run_states(sp: StudyPlan) -> list[RunState]:
    """Every run's state from what is on disk: its result file, the lock of the worker running it, its train
    checkpoints and its eval's partial output. Reads only."""
    from distillkit.artifacts import MANIFEST, partial_dir
    from distillkit.locks import live_holder
    from distillkit.training.checkpoint import latest_checkpoint

    budgets_file = sp.recipe.results / "budgets.json"
    budgets = json.loads(budgets_file.read_text(encoding="utf-8")) if budgets_file.is_file() else {}
    logged = _logged_steps(sp.recipe.root / "logs")
    out = []
    for job in sp.jobs:
        res = _result_path(sp, job)
        if res.is_file():
            r = json.loads(res.read_text(encoding="utf-8"))
            cpu = (r.get("machine") or {}).get("cpu", "?")
            out.append(RunState(job.id, "done", f"{r.get('wall_s', 0) / 60:.0f} min on {cpu}, {str(r.get('written', ''))[:10]}"))
            continue
        holder = live_holder(_lock_path(sp, job))
        trained = job.train is None or (Path(job.train.out) / MANIFEST).is_file()
        if not trained:
            steps = (budgets.get(job.arm) or {}).get("steps")
            last = latest_checkpoint(partial_dir(job.train.out) / "checkpoints")
            at = f"checkpoint step {last[0]} of {steps or '?'}" if last else "no checkpoint yet"
            if holder is not None:
                now = logged.get(job.id)
                out.append(RunState(job.id, "training", (f"{now}, " if now else "") + f"{at}; worker pid {holder.pid}"))
            elif partial_dir(job.train.out).exists():
                out.append(RunState(job.id, "interrupted", f"training: {at}" + (" (resumes there)" if last else " (restarts)")))
            else:
                out.append(RunState(job.id, "pending", ""))
        elif holder is not None:
            out.append(RunState(job.id, "evaluating", f"worker pid {holder.pid}"))
        elif partial_dir(job.eval.out).exists():
            out.append(RunState(job.id, "interrupted", "evaluation (resumes with its finished models)"))
        else:
            out.append(RunState(job.id, "pending", "trained; evaluation to do" if job.train is not None else ""))
    return out


def _logged_steps(logs: Path) -> dict[str, str]:
    """Run id -> 'step N/M, eta E' from the last step line of the run each worker log names last (advisory: the
    log is for people; the checkpoint is what a resume uses)."""
    found: dict[str, str] = {}
    for log in sorted(logs.glob("worker-*.log")) if logs.is_dir() else []:
        run, step = None, None
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("── study run "):
                    run, step = line.split()[3], None
                elif line.startswith("step ") and run is not None:
                    parts = line.split()
                    step = f"{parts[0]} {parts[1]}" + (f", eta {parts[-1]}" if "eta" in parts else "")
        if run is not None and step is not None:
            found[run] = step
    return found


def _record_setting(path: Path, sp: StudyPlan) -> None:
    """study.json: the shared setting. A results folder holds one study: arms and seeds may be added later, but a
    different shared setting (score, budget, evaluation, shared plan/train keys) is refused."""
    from distillkit.study import write_json

    shared = {k: sp.setting[k] for k in ("score", "budget", "eval", "plan", "train")}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        old_shared = {k: old.get(k) for k in shared}
        if json.loads(json.dumps(old_shared, default=str)) != json.loads(json.dumps(shared, default=str)):
            changed = [k for k in shared if json.dumps(old_shared[k], sort_keys=True, default=str) != json.dumps(shared[k], sort_keys=True, default=str)]
            raise ConfigError(f"{path} records a study with another {', '.join(changed)}: its results would not be "
                              "comparable; use another results folder (--results) or restore the recipe")
        arms = {**old.get("arms", {}), **sp.setting["arms"]}
    else:
        arms = sp.setting["arms"]
    write_json(path, {**sp.setting, "arms": arms})


def _make_plans(sp: StudyPlan) -> None:
    from distillkit.artifacts import partial_dir
    from distillkit.pipelines import plan

    for arm, cfg in sp.plans.items():
        plan.run(cfg, resume=partial_dir(cfg.out).exists())


def _result_path(sp: StudyPlan, job: RunJob) -> Path:
    return sp.recipe.results / f"{job.id}.json"


def _lock_path(sp: StudyPlan, job: RunJob) -> Path:
    """The lock a worker holds while it runs `job` (claimed in `_work`, read by `run_states`)."""
    return sp.recipe.root / "locks" / f"{job.id}.lock"


def _pending(sp: StudyPlan) -> list[RunJob]:
    out = []
    for job in sp.jobs:
        p = _result_path(sp, job)
        if p.is_file():
            got = json.loads(p.read_text(encoding="utf-8")).get("fingerprint")
            if got == job.fingerprint:
                continue
            raise ConfigError(f"{p} was made with another setting of {job.id} (fingerprint {got}, now {job.fingerprint}): "
                              "move it away to rerun that run, or use another results folder (--results)")
        out.append(job)
    return out


def _work(sp: StudyPlan, pending: list[RunJob], threads: int) -> list[str]:
    """Run every pending job this process can claim, in order."""
    import torch

    from distillkit.locks import claim, release

    torch.set_num_threads(threads)
    ran = []
    for job in pending:
        if sp.recipe.precondition is not None and job.id not in _gate_ids(sp):
            ran += _await_precondition(sp)  # raises PreconditionFailed when the teacher is not ahead
        lock = _lock_path(sp, job)
        if _result_path(sp, job).is_file() or not claim(lock):
            continue
        try:
            if _result_path(sp, job).is_file():  # finished by another worker between the check and the claim
                continue
            _run_job(sp, job)
            ran.append(job.id)
        finally:
            release(lock)
    return ran


PRECONDITION_FILE = "precondition.json"


class PreconditionFailed(DistillkitError):
    """The teacher is not ahead of the precondition's arm by the margin: no other arm runs. Exit 1."""


def _gate_ids(sp: StudyPlan) -> set[str]:
    pre = sp.recipe.precondition
    return set() if pre is None else {REFERENCE} | {f"{pre.arm}-s{x}" for x in pre.seeds}


def _await_precondition(sp: StudyPlan, poll_s: float = 10.0) -> list[str]:
    """Return once the precondition holds (the runs it needs done, by this worker or another), writing
    {results}/precondition.json; raise PreconditionFailed when it does not. Returns the gate runs this worker ran."""
    from distillkit.locks import claim, release

    gate = [j for j in sp.jobs if j.id in _gate_ids(sp)]
    ran: list[str] = []
    while True:
        missing = [j for j in gate if not _result_path(sp, j).is_file()]
        if not missing:
            break
        for j in missing:  # unclaimed (or left by a killed worker): run it here
            lock = _lock_path(sp, j)
            if claim(lock):
                try:
                    if not _result_path(sp, j).is_file():
                        _run_job(sp, j)
                        ran.append(j.id)
                finally:
                    release(lock)
        if any(not _result_path(sp, j).is_file() for j in gate):
            time.sleep(poll_s)  # another worker is on it
    record = precondition_record(sp)
    if not record["passed"]:
        raise PreconditionFailed(sp.recipe.precondition.failure(record, sp.recipe.results / PRECONDITION_FILE))
    return ran


def precondition_record(sp: StudyPlan) -> dict[str, Any]:
    """The precondition's figures from the result files, also written to {results}/precondition.json."""
    from distillkit.study import write_json

    record = sp.recipe.precondition.evaluate(sp.recipe.results)
    write_json(sp.recipe.results / PRECONDITION_FILE, record)
    return record


def _run_job(sp: StudyPlan, job: RunJob) -> None:
    from distillkit.artifacts import partial_dir
    from distillkit.pipelines import eval as ev
    from distillkit.pipelines import train
    from distillkit.progress import console
    from distillkit.study import machine, write_json
    from distillkit.study_results import collect_reference, collect_run

    done = sum(1 for j in sp.jobs if _result_path(sp, j).is_file())
    console.print(f"[bold cyan]── study run {job.id}[/] ({done} of {len(sp.jobs)} finished)")
    t0 = time.time()
    tr = None
    if job.train is not None:
        tr = train.run(job.train, resume=partial_dir(job.train.out).exists())
    er = ev.run(job.eval, resume=partial_dir(job.eval.out).exists())
    info = {"study": sp.recipe.name, "fingerprint": job.fingerprint, "machine": machine(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(time.time() - t0, 1)}
    if job.arm is None:
        body = collect_reference(er)
    else:
        body = collect_run(tr, er, job.arm)
        body.update({"arm": job.arm, "seed": job.seed})
    write_json(_result_path(sp, job), {**info, **body})
    console.print(f"[green]study run {job.id} done[/] in {info['wall_s']:.0f} s → {_result_path(sp, job)}")


def _spawn_workers(rec: StudyRecipe, pending: list[RunJob], jobs: int, threads: int) -> list[str]:
    """`jobs` worker processes share the queue through lock files; their logs go to {out}/logs."""
    from distillkit.progress import progress_bar

    logs = rec.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "distillkit.cli.main", "study", str(rec.path), "--out", str(rec.root),
           "--results", str(rec.results), "--threads", str(threads), "--worker"]
    procs = []
    # Workers get their own session, so a Ctrl-C in the terminal reaches them once, through the parent:
    # SIGTERM/SIGINT to the parent is passed on, and a training worker checkpoints and stops after its step.
    with _forward_signals(procs) as received:
        for i in range(min(jobs, len(pending))):
            if received:
                break
            f = open(logs / f"worker-{i}.log", "a", encoding="utf-8")
            procs.append((subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True), f))
            time.sleep(2)  # let the first worker claim its run before the next looks
        todo = {j.id: rec.results / f"{j.id}.json" for j in pending}
        with progress_bar(f"study {rec.name}: runs ({len(procs)} workers, logs in {logs})", len(todo), unit="run") as bar:
            seen = 0
            while any(p.poll() is None for p, _ in procs):
                time.sleep(1)
                n = sum(1 for p in todo.values() if p.is_file())
                bar.advance(n - seen)
                seen = n
            bar.advance(sum(1 for p in todo.values() if p.is_file()) - seen)
    failed = [i for i, (p, f) in enumerate(procs) if p.returncode != 0]
    for _, f in procs:
        f.close()
    if received:
        from distillkit.training.stop import StoppedBySignal, signal_name

        raise StoppedBySignal(f"study {rec.name} stopped by {signal_name(received[0])}: runs in training wrote a "
                              f"checkpoint first (see {logs}/worker-N.log); rerun the same command to resume", received[0])
    pre = rec.results / PRECONDITION_FILE
    if failed and rec.precondition is not None and pre.is_file() and not json.loads(pre.read_text(encoding="utf-8"))["passed"]:
        raise PreconditionFailed(rec.precondition.failure(json.loads(pre.read_text(encoding="utf-8")), pre))
    if failed:
        raise RuntimeError(f"study worker(s) {', '.join(map(str, failed))} failed: see {logs}/worker-N.log; "
                           "rerun the same command to resume")
    return [i for i, p in todo.items() if p.is_file()]


@contextlib.contextmanager
def _forward_signals(procs: list) -> Iterator[list[int]]:
    """While the block runs, SIGTERM/SIGINT to this process is recorded (yielded list) and passed on to every
    live worker; a worker that gets it twice stops at once."""
    import signal

    from distillkit.training.stop import handling

    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        from distillkit.progress import console

        console.print(f"[yellow]study[/]: {signal.Signals(signum).name} received: passed on to the workers "
                      "(training runs checkpoint after their step; send it again to stop them at once)")
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signum)

    with handling(forward):
        yield received


def _report(sp: StudyPlan) -> Path | None:
    from distillkit.study import load_results
    from distillkit.study_report import write_report

    results = load_results(sp.recipe.results)
    ref = sp.recipe.results / f"{REFERENCE}.json"
    reference = json.loads(ref.read_text(encoding="utf-8")) if ref.is_file() else None
    budgets_p = sp.recipe.results / "budgets.json"
    budgets = json.loads(budgets_p.read_text(encoding="utf-8")) if budgets_p.is_file() else {}
    if not results:
        return None
    return write_report(sp.recipe, results, reference, budgets)


__all__ = ["RunState", "format_states", "run_states", "StudyOptions", "StudyResult", "StudyPlan", "RunJob", "prepare", "check_budgets", "run", "find_recipe", "KIND"]
