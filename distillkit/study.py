"""A study: arms (each a set of plan/train overrides) x training seeds, one equal budget, one evaluation.

The recipe (TOML) names everything a study compares; `read_study` checks it whole before anything runs::

    name = "pocl-gsm8k"
    out = "runs/pocl"                  # run directories (plans, checkpoints, students, evals): large, not committed
    results = "docs/results/pocl"      # one small JSON per finished (arm, seed) run, the report and its plot
    scores = "{out}/score"             # a score artifact (teacher top-k for offline arms)
    seeds = [0, 1, 2]
    baseline = "fkl"
    compare = [["tvd-pocl", "tvd"]]    # more paired comparisons for the report: [arm, its reference] (optional)
    threads = 1                        # torch threads per run
    jobs = 2                           # runs side by side
    [budget]
    epochs = 10                        # sample passes per training sample, every arm (or: steps = N)
    [plan]                             # plan keys every arm shares
    [train]                            # train keys every arm shares
    [eval]                             # eval keys (gen_seeds, limit, tasks, ...); references = true|false
    [arms.fkl]
    plan = { curriculum = false }
    [arms.fkl-pocl]
    plan = { stages = 4, restart_optimizer = true }
    [arms.fkl-sampled]
    scores = "{out}/score-sampled"     # an arm may train from another score artifact of the same data, split,
    plan = { curriculum = false }      # models and length (e.g. another teacher store); every arm is still
                                       # evaluated on the study's `scores` held-out split

An arm's plan with S cumulative stages (stage s trains on the easiest (s+1)/S) is given
``stage_length = 2·epochs/(S+1)`` epochs per stage (``epochs/S`` for a plan with ``pools = "full"``, whose
stages each hold all the data), so every arm makes the same number of sample passes;
with ``steps = N`` each of its S stages gets N/S steps. The study owns the keys that define the budget
and the runs' paths: arms and shared tables may not set them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from distillkit.errors import ConfigError

TOP_KEYS = ("name", "out", "results", "scores", "teacher", "student", "seeds", "baseline", "compare", "threads", "jobs")
PRECONDITION_KEYS = ("arm", "metric", "margin", "seeds")
TABLES = ("budget", "plan", "train", "eval", "arms", "precondition")
# Keys the study sets itself, per stage: the budget, the inputs and the outputs.
OWNED = {
    "plan": ("scores", "out", "stage_length", "stage_unit"),
    "train": ("plan", "out", "seed", "steps", "student", "teacher"),
    "eval": ("models", "out", "data", "teacher", "baseline"),
}
EVAL_EXTRA = ("references",)  # study-only key of [eval]: also evaluate the teacher and the initial student


@dataclass(frozen=True)
class Budget:
    unit: Literal["epochs", "steps"]
    value: float

    def stage_length(self, stages: int, full_pools: bool = False) -> float:
        """Per-stage length for a plan of `stages` cumulative stages (or, `full_pools`, stages that each hold all the
        training data), so that the total equals the budget."""
        if self.unit == "epochs":
            return self.value / stages if full_pools else 2.0 * self.value / (stages + 1)
        return self.value / stages

    def describe(self) -> str:
        return f"{self.value:g} {self.unit}" + (" (sample passes per training sample)" if self.unit == "epochs" else "")


@dataclass(frozen=True)
class Arm:
    name: str
    plan: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    scores: Path | None = None  # the arm's own score artifact (plan + offline teacher); None: the study's


RunStateName = Literal["done", "training", "evaluating", "interrupted", "pending"]


@dataclass(frozen=True)
class RunState:
    """Where one run of the study stands (`distillkit study RECIPE --status`)."""

    id: str
    state: RunStateName
    detail: str


def format_states(states: list[RunState]) -> str:
    """The --status table: one line per run, then the count per state."""
    width = max((len(s.id) for s in states), default=3)
    lines = [f"{s.id:<{width}}  {s.state:<11}  {s.detail}".rstrip() for s in states]
    counts = {k: sum(1 for s in states if s.state == k) for k in ("done", "training", "evaluating", "interrupted", "pending")}
    lines.append(f"{len(states)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return "\n".join(lines)


@dataclass(frozen=True)
class Precondition:
    """``[precondition]``: before any other arm runs, the teacher (the reference evaluation) must beat arm `arm`
    (an SFT student at the study's budget, say) on `metric` by at least `margin`, over the arm's `seeds`."""

    arm: str
    metric: str = "rouge_l"
    margin: float = 0.03
    seeds: tuple[int, ...] = (0,)

    def check(self, teacher: float, arm_values: list[float]) -> dict[str, Any]:
        """The record the study writes (precondition.json): values, gap, and whether it holds."""
        mean = sum(arm_values) / len(arm_values)
        gap = (mean - teacher) if self.metric in ("ppl", "kl") else (teacher - mean)  # "ahead": lower ppl / KL
        return {"arm": self.arm, "metric": self.metric, "margin": self.margin, "seeds": list(self.seeds),
                "teacher": teacher, "arm_value": mean, "arm_values": arm_values, "gap": gap,
                "passed": bool(gap >= self.margin)}

    def evaluate(self, results: Path) -> dict[str, Any]:
        """The record from the result files in `results` (reference.json's teacher, ``{arm}-s{seed}.json``), with the
        teacher's other metrics beside it."""
        ref = json.loads((results / "reference.json").read_text(encoding="utf-8"))
        teacher = next((m for m in ref.get("models", {}).values() if m.get("role") == "teacher"), None)
        if teacher is None or self.metric not in teacher.get("metrics", {}):
            raise ConfigError(f"precondition: the reference evaluation has no teacher {self.metric!r} "
                              f"(it has {sorted((teacher or {}).get('metrics', {}))}); pick a metric the evaluation measures")
        values = [float(json.loads((results / f"{self.arm}-s{x}.json").read_text(encoding="utf-8"))["metrics"][self.metric])
                  for x in self.seeds]
        return {**self.check(float(teacher["metrics"][self.metric]), values), "teacher_metrics": teacher.get("metrics", {})}

    @staticmethod
    def failure(record: Mapping[str, Any], where: Path) -> str:
        """The one line of a precondition that does not hold."""
        return (f"precondition failed: the teacher's {record['metric']} {record['teacher']:.4f} is {record['gap']:+.4f} ahead of "
                f"arm {record['arm']!r} ({record['arm_value']:.4f}), less than the margin {record['margin']:g}; no other arm "
                "runs. Strengthen the teacher (e.g. more epochs of teacher correction) or widen the gap (a student pruned "
                f"further), rescore, and rerun ({where} holds the figures)")


@dataclass(frozen=True)
class StudyRecipe:
    path: Path
    name: str
    root: Path
    results: Path
    scores: Path
    teacher: str | None
    student: str | None
    seeds: tuple[int, ...]
    baseline: str
    budget: Budget
    arms: dict[str, Arm]
    plan: dict[str, Any]
    train: dict[str, Any]
    eval: dict[str, Any]
    references: bool = True
    threads: int | None = None
    jobs: int = 1
    compare: tuple[tuple[str, str], ...] = ()  # (arm, reference) pairs the report compares besides the baseline
    precondition: Precondition | None = None  # the teacher must be ahead of this arm before any other arm runs

    def run_ids(self) -> list[tuple[str, int]]:
        """Every (arm, seed), seed-major: a study cut short has every arm at its first seeds."""
        return [(a, s) for s in self.seeds for a in self.arms]


def run_id(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_study(spec: str | Path, out: str | None = None, results: str | None = None) -> StudyRecipe:
    """Parse and check a study recipe; every problem is one line naming the fix (ConfigError, exit 2)."""
    import tomllib

    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"study recipe {spec!r} not found: pass a TOML file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse study recipe {path}: {e}") from e
    where = f"study recipe {path}"
    unknown = [k for k in raw if k not in TOP_KEYS + TABLES]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; top-level keys are {', '.join(TOP_KEYS)} "
                          f"and tables {', '.join(TABLES)}")
    root = Path(out or raw.get("out") or f"runs/{path.stem}")

    def expand(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("{out}", str(root))
        if isinstance(v, list):
            return [expand(x) for x in v]
        if isinstance(v, dict):
            return {k: expand(x) for k, x in v.items()}
        return v

    raw = {k: expand(v) for k, v in raw.items() if k != "out"}
    if "scores" not in raw:
        raise ConfigError(f"{where}: scores is required (a score artifact directory, e.g. scores = \"{{out}}/score\")")
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(_int(s) for s in seeds)) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds must be a list of distinct whole numbers, got {seeds!r}")
    for k in ("threads", "jobs"):
        if k in raw and not (_int(raw[k]) and raw[k] >= 1):
            raise ConfigError(f"{where}: {k} must be a whole number >= 1, got {raw[k]!r}")
    for t in ("budget", "plan", "train", "eval", "arms"):
        if t in raw and not isinstance(raw[t], dict):
            raise ConfigError(f"{where}: {t} must be a [table]")

    budget = _budget(raw.get("budget"), where)
    shared = {t: dict(raw.get(t, {})) for t in ("plan", "train", "eval")}
    references = shared["eval"].pop("references", True)
    if not isinstance(references, bool):
        raise ConfigError(f"{where}: [eval] references must be true or false")
    for stage, table in shared.items():
        owned = [k for k in table if k in OWNED[stage]]
        if owned:
            raise ConfigError(f"{where}: [{stage}] sets {', '.join(owned)}, which the study sets itself "
                              f"({_owned_why(stage)}); remove it")

    arms_raw = raw.get("arms") or {}
    if len(arms_raw) < 2:
        raise ConfigError(f"{where}: a study needs at least two [arms.NAME] tables (one of them the baseline)")
    arms: dict[str, Arm] = {}
    for name, table in arms_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: arms.{name} must be a table with plan = {{...}} and/or train = {{...}}")
        bad = [k for k in table if k not in ("plan", "train", "scores")]
        if bad:
            raise ConfigError(f"{where}: arms.{name} has unknown key(s) {', '.join(bad)}; an arm has only "
                              "plan = {...}, train = {...} (keys of `distillkit plan` / `distillkit train`) and scores = \"DIR\"")
        if "scores" in table and not isinstance(table["scores"], str):
            raise ConfigError(f"{where}: arms.{name}.scores must be a score artifact directory (a string)")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}: arm name {name!r} must be letters, digits, - and _ (it names files)")
        for stage in ("plan", "train"):
            owned = [k for k in table.get(stage, {}) if k in OWNED[stage]]
            if owned:
                raise ConfigError(f"{where}: arm {name!r} sets {stage} key(s) {', '.join(owned)}: "
                                  f"{_owned_why(stage)}; remove it from the arm")
        arms[name] = Arm(name, dict(table.get("plan", {})), dict(table.get("train", {})),
                         Path(table["scores"]) if "scores" in table else None)
    baseline = raw.get("baseline", next(iter(arms)))
    if baseline not in arms:
        raise ConfigError(f"{where}: baseline {baseline!r} is not an arm; arms are {', '.join(arms)}")
    compare = _compare(raw.get("compare", []), arms, baseline, where)
    precondition = _precondition(raw.get("precondition"), arms, tuple(seeds), references, where)
    results_dir = Path(results or raw.get("results") or root / "results")
    return StudyRecipe(path=path, name=str(raw.get("name", path.stem)), root=root, results=results_dir,
                       scores=Path(raw["scores"]), teacher=raw.get("teacher"), student=raw.get("student"),
                       seeds=tuple(seeds), baseline=baseline, budget=budget, arms=arms, plan=shared["plan"],
                       train=shared["train"], eval=shared["eval"], references=references,
                       threads=raw.get("threads"), jobs=int(raw.get("jobs", 1)), compare=compare, precondition=precondition)


def _precondition(raw: Any, arms: Mapping[str, Arm], seeds: tuple[int, ...], references: bool, where: str) -> Precondition | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: precondition must be a [table] with arm = \"NAME\" (and metric, margin, seeds)")
    bad = [k for k in raw if k not in PRECONDITION_KEYS]
    if bad:
        raise ConfigError(f"{where}: [precondition] has unknown key(s) {', '.join(bad)}; its keys are {', '.join(PRECONDITION_KEYS)}")
    arm = raw.get("arm")
    if arm not in arms:
        raise ConfigError(f"{where}: [precondition] arm {arm!r} is not an arm; arms are {', '.join(arms)}")
    if not references:
        raise ConfigError(f"{where}: [precondition] compares the teacher with arm {arm!r} and needs the reference evaluation: "
                          "set [eval] references = true")
    pseeds = raw.get("seeds", [seeds[0]])
    if not (isinstance(pseeds, list) and pseeds and all(_int(x) and x in seeds for x in pseeds)):
        raise ConfigError(f"{where}: [precondition] seeds must be a non-empty list of the study's seeds {list(seeds)}, got {pseeds!r}")
    margin = raw.get("margin", 0.03)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ConfigError(f"{where}: [precondition] margin must be a number (in the metric's units: 0.03 = 3 ROUGE-L points)")
    metric = raw.get("metric", "rouge_l")
    if not isinstance(metric, str):
        raise ConfigError(f"{where}: [precondition] metric must be a metric name such as rouge_l")
    return Precondition(arm=arm, metric=metric, margin=float(margin), seeds=tuple(pseeds))


def _compare(raw: Any, arms: Mapping[str, Arm], baseline: str, where: str) -> tuple[tuple[str, str], ...]:
    """`compare = [["tvd-pocl", "tvd"], ...]`: each an arm and the arm it is paired against."""
    ok = isinstance(raw, list) and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in raw)
    if not ok:
        raise ConfigError(f'{where}: compare must be a list of [arm, reference] pairs, e.g. compare = [["tvd-pocl", "tvd"]]')
    out = []
    for arm, ref in raw:
        bad = [x for x in (arm, ref) if x not in arms]
        if bad:
            raise ConfigError(f"{where}: compare names {', '.join(map(repr, bad))}, not an arm; arms are {', '.join(arms)}")
        if arm == ref:
            raise ConfigError(f"{where}: compare pairs {arm!r} with itself; give [arm, the arm it is compared against]")
        if ref == baseline:
            continue  # the report compares every arm with the baseline already
        out.append((arm, ref))
    return tuple(dict.fromkeys(out))


def _owned_why(stage: str) -> str:
    return {"plan": "every arm's stage lengths come from the study's [budget]; inputs and outputs from the study",
            "train": "the study's [budget], seeds, scores and models decide these for every arm",
            "eval": "the study evaluates each run's student on the score artifact's held-out split"}[stage]


def _budget(table: Any, where: str) -> Budget:
    if not isinstance(table, dict) or len(table) != 1 or next(iter(table)) not in ("epochs", "steps"):
        raise ConfigError(f"{where}: [budget] needs exactly one of epochs = E (sample passes per training sample) "
                          "or steps = N (optimizer steps), the same for every arm")
    unit, value = next(iter(table.items()))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (unit == "steps" and not _int(value)):
        raise ConfigError(f"{where}: [budget] {unit} must be a positive {'whole ' if unit == 'steps' else ''}number, got {value!r}")
    return Budget(unit, float(value))


# ---------------------------------------------------------------- results: one small JSON per run

def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_results(results: Path) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for p in sorted(results.glob("*-s*.json")):
        r = json.loads(p.read_text(encoding="utf-8"))
        out[(r["arm"], int(r["seed"]))] = r
    return out


def machine() -> dict[str, Any]:
    """Where a run ran: CPU model and whether it has native bf16, torch threads, GPU if any."""
    cpu = ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}), "cores": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------- metrics and the summary

@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    scale: float = 1.0  # shown as value x scale (ROUGE-L in points)
    fmt: str = "{:.2f}"


METRICS = (
    Metric("rouge_l", "ROUGE-L (sampled answers, points)", True, 100.0),
    Metric("ppl", "held-out perplexity", False),
    Metric("kl", "held-out KL(teacher‖student), nats/token", False, 1.0, "{:.4f}"),
    # Per-domain gap closed (distillkit.study_results.gap_closed), summarised over domains within each run:
    # the lagging domain (min), the mean, and the spread across domains; in % of each domain's starting gap.
    Metric("gap_closed_min", "ppl gap closed in the lagging domain (min over domains), %", True, 100.0, "{:.1f}"),
    Metric("gap_closed_mean", "ppl gap closed, mean over domains, %", True, 100.0, "{:.1f}"),
    Metric("gap_closed_sd", "ppl gap closed, spread across domains (sd), points", False, 100.0, "{:.1f}"),
    Metric("kl_closed_min", "KL closed in the lagging domain (min over domains), %", True, 100.0, "{:.1f}"),
    Metric("kl_closed_mean", "KL closed, mean over domains, %", True, 100.0, "{:.1f}"),
    Metric("kl_closed_sd", "KL closed, spread across domains (sd), points", False, 100.0, "{:.1f}"),
    Metric("ratio_max", "largest per-domain ppl ratio student/teacher after training", False, 1.0, "{:.3f}"),
)
# The metric study.png plots: the first of these a study has (else its first metric).
PRIMARY = ("rouge_l", "gap_closed_min")


def value(r: Mapping[str, Any], key: str) -> float | None:
    v = r.get("metrics", {}).get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    metric: Metric
    estimate: Any  # stats.Estimate over seeds
    per_seed: dict[int, float]
    paired: Any = None  # stats.Estimate of arm - baseline over the shared seeds
    paired_prompts: Any = None  # stats.Estimate of the per-prompt difference (averaged over shared seeds)
    verdict: str = ""
    detectable: float = math.nan


def summarize(results: Mapping[tuple[str, int], Mapping[str, Any]], arms: list[str], baseline: str,
              metric: Metric) -> list[ArmSummary]:
    """Per arm: mean ± 95 % CI over seeds; per non-baseline arm the paired difference to the baseline."""
    from distillkit import stats

    per_arm: dict[str, dict[int, float]] = {a: {} for a in arms}
    for (arm, seed), r in results.items():
        v = value(r, metric.key)
        if arm in per_arm and v is not None:
            per_arm[arm][seed] = v * metric.scale
    base = per_arm.get(baseline, {})
    out = []
    for arm in arms:
        xs = per_arm[arm]
        if not xs:
            continue
        est = stats.mean_ci([xs[s] for s in sorted(xs)])
        if arm == baseline:
            out.append(ArmSummary(arm, metric, est, xs))
            continue
        d = stats.paired(xs, base)
        dp = _paired_prompts(results, arm, baseline, metric) if metric.key == "rouge_l" else None
        out.append(ArmSummary(arm, metric, est, xs, d, dp, stats.verdict(d, metric.higher_is_better),
                              stats.detectable(d) if d is not None else math.nan))
    return out


def _paired_prompts(results, arm: str, baseline: str, metric: Metric):
    """Per held-out prompt: the arm's ROUGE-L minus the baseline's, each averaged over the seeds both have."""
    from distillkit import stats

    seeds = sorted({s for a, s in results if a == arm} & {s for a, s in results if a == baseline})
    a_p: dict[str, list[float]] = {}
    b_p: dict[str, list[float]] = {}
    for s in seeds:
        for src, acc in ((results[(arm, s)], a_p), (results[(baseline, s)], b_p)):
            for pid, v in src.get("per_prompt", {}).get("rouge_l", {}).items():
                acc.setdefault(pid, []).append(v)
    common = sorted(set(a_p) & set(b_p))
    if not common:
        return None
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return stats.paired({p: mean(a_p[p]) * metric.scale for p in common}, {p: mean(b_p[p]) * metric.scale for p in common})


def domain_values(results, arm: str, key: str = "ppl") -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for (a, _s), r in sorted(results.items()):
        if a == arm:
            for d, v in r.get("domains", {}).get(key, {}).items():
                out.setdefault(d, []).append(float(v))
    return out


def domain_by_seed(results, arm: str, key: str) -> dict[str, dict[int, float]]:
    """{domain: {seed: value}} of one per-domain key of an arm's result files (for paired per-domain differences)."""
    out: dict[str, dict[int, float]] = {}
    for (a, s), r in sorted(results.items()):
        if a == arm:
            for d, v in (r.get("domains", {}).get(key) or {}).items():
                if v is not None:
                    out.setdefault(d, {})[s] = float(v)
    return out


__all__ = ["Arm", "Budget", "Precondition", "RunState", "format_states", "StudyRecipe", "read_study", "run_id", "write_json", "load_results",
           "machine", "Metric", "METRICS", "PRIMARY", "ArmSummary", "summarize", "domain_values", "domain_by_seed", "value"]
