"""`distillkit run RECIPE`: chain the stages of one TOML recipe, skipping finished ones.

A recipe names an output root and one table per stage::

    out = "runs/demo"            # relative paths resolve against the working directory
    [prune]                      # optional: make the student by depth pruning
    model = "smollm2-135m"
    drop_layers = "16-22"
    [score]                      # keys of `distillkit score` (see --print-config)
    data = "demo"
    teacher = "smollm2-135m"
    student = "{out}/student"

``{out}`` expands to the output root. Each stage writes into its own
sub-directory (``{out}/student``, ``{out}/score``, ...). A stage whose artifact
is complete for the same config is skipped; an interrupted one is resumed.
Recipes shipped with distillkit (``demo``, ...) are found by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillkit.errors import ConfigError

RECIPES = Path(__file__).resolve().parent
STAGES = ("prune", "score")


def find_recipe(spec: str) -> Path:
    p = Path(spec)
    if p.is_file():
        return p
    shipped = RECIPES / f"{spec}.toml"
    if shipped.is_file():
        return shipped
    names = sorted(x.stem for x in RECIPES.glob("*.toml"))
    raise ConfigError(f"recipe {spec!r} not found: pass a TOML file or one of: {', '.join(names)}")


def load_recipe(spec: str, out: str | None = None) -> tuple[Path, dict[str, dict[str, Any]]]:
    import tomllib

    path = find_recipe(spec)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse recipe {path}: {e}") from e
    root = Path(out or raw.pop("out", None) or f"runs/{path.stem}")
    raw.pop("out", None)
    raw.pop("name", None)
    unknown = [k for k in raw if k not in STAGES]
    if unknown:
        raise ConfigError(f"recipe {path}: unknown table(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")

    def expand(v: Any) -> Any:
        return v.replace("{out}", str(root)) if isinstance(v, str) else v

    return root, {stage: {k: expand(v) for k, v in raw[stage].items()} for stage in STAGES if stage in raw}


def run(spec: str, out: str | None = None, overwrite: bool = False) -> Path:
    from distillkit.config import resolve
    from distillkit.progress import console
    from pipelines import score

    root, stages = load_recipe(spec, out)
    root.mkdir(parents=True, exist_ok=True)
    if "prune" in stages:
        p = dict(stages["prune"])
        dest = Path(p.pop("out", root / "student"))
        if (dest / "distillkit-prune.json").is_file() and not overwrite:
            console.print(f"[green]prune[/] {dest} exists: skipped")
        else:
            from distillkit.prune import prune_model

            console.print(f"[bold]prune[/] {p.get('model')} -> {dest}")
            prune_model(p.pop("model"), dest, overwrite=True, **p)
    if "score" in stages:
        s = {"out": str(root / "score"), **stages["score"]}
        cfg = resolve(score.ScoreConfig, options=s)
        partial = Path(cfg.out).with_name(Path(cfg.out).name + ".partial")
        score.run(cfg, resume=partial.exists(), overwrite=overwrite)
    return root
