"""`distillkit` entry point. torch and the model libraries are imported inside commands; the stage config classes
(imported here to generate each command's options, distillkit/cli/options.py) import none of them."""

from __future__ import annotations

from typing import List, Optional

import typer

from distillkit.cli.common import STATE, handled
from distillkit.cli.options import Extra, StageArgs, stage_command
from distillkit.pipelines.prune import PruneConfig
from distillkit.pipelines.score import ScoreConfig

app = typer.Typer(
    name="distillkit",
    help="Distill a teacher LLM into a student: score -> plan -> train -> eval, each stage a resumable Arrow artifact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from distillkit import __version__

        typer.echo(f"distillkit {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    STATE["debug"] = debug
    import os

    # distillkit draws its own progress bars; transformers' per-load bars are noise in a pipeline log.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# Not a config key: it joins finished shard artifacts instead of running a scoring config.
_MERGE = Extra("merge", Optional[List[str]], ("--merge",), "Join these shard artifacts into --out (repeat per shard) instead of scoring.",
               panel="shards", metavar="<dir>")


@app.command()
@stage_command(ScoreConfig, "score", short={"data": "-d", "teacher": "-t", "student": "-s", "out": "-o"}, extras=[_MERGE])
def score(args: StageArgs) -> None:
    """Score every sample with teacher and student: difficulty per sample, perplexity gap per domain."""
    from distillkit.pipelines import score as stage

    merge = args.extras["merge"]
    if merge:
        out = args.options.get("out")
        if not out:
            from distillkit.errors import ConfigError

            raise ConfigError("--merge needs --out for the merged artifact")
        path = stage.merge(list(merge), out, overwrite=args.overwrite)
        _summary(path)
        return
    res = stage.run(args.resolve(), resume=args.resume, overwrite=args.overwrite)
    _summary(res.path)


def _summary(path) -> None:
    from distillkit.cli.show import domains_table
    from distillkit.progress import console

    console.print(domains_table(path))
    console.print(f"[green]wrote[/] {path}")


@app.command()
def inspect(path: str = typer.Argument(..., help="An artifact directory."),
            rows: int = typer.Option(5, "--rows", help="Rows to show per table.")) -> None:
    """Show what an artifact holds: manifest, files, and a preview of each table."""
    with handled():
        from distillkit.cli.show import show_artifact

        show_artifact(path, rows)


@app.command()
@stage_command(PruneConfig, "prune", short={"model": "-m", "out": "-o"})
def prune(args: StageArgs) -> None:
    """Make a student by depth pruning (Minitron-style): keep a subset of the teacher's layers."""
    from distillkit.pipelines import prune as stage

    res = stage.run(args.resolve(), resume=args.resume, overwrite=args.overwrite)
    from distillkit.progress import console

    from distillkit.records import PruneRecord

    rec = PruneRecord.from_manifest(res.manifest["prune"], f"{res.path}/manifest.json")
    console.print({"source": rec.source, "kept_layers": list(rec.kept_layers), "dropped_layers": list(rec.dropped_layers)}
                  | res.figures)
    console.print(f"[green]wrote[/] {res.path}")


@app.command("run")
def run_recipe(
    recipe: str = typer.Argument(..., help="A recipe TOML file, or the name of a shipped one (demo, ci-smoke)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output root (default: the recipe's `out`)."),
    only: Optional[str] = typer.Option(None, "--only", help="Run only these stages (comma list, e.g. score,plan)."),
    start: Optional[str] = typer.Option(None, "--from", help="Run this stage and every later one."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo the selected stages even where their artifacts are complete."),
) -> None:
    """Run a recipe's stages (prune, score, plan, train, eval) in order, skipping finished ones and resuming an interrupted one."""
    with handled():
        from distillkit.progress import console
        from distillkit.pipelines import recipe as rec
        from distillkit.ranks import is_main_process

        res = rec.run(recipe, out, overwrite=overwrite, only=only, start=start)
        if not is_main_process():
            return
        ran = {r.stage for r in res.stages}
        last = {s: res.recipe.out(s) for s in res.recipe.stages}
        report = res.report if "eval" in ran else None
        if report is not None:
            from distillkit.cli.eval_cmd import summary

            summary(last["eval"])
        elif "train" in ran and (last["train"] / "manifest.json").is_file():
            from distillkit.cli.train_cmd import summary

            summary(last["train"])
        elif "score" in ran and (last["score"] / "manifest.json").is_file():
            _summary(last["score"])
        if report is not None:
            typer.echo(f"report: {report}")
        else:
            console.print(f"[green]done[/]: results under {res.root}  (inspect one with: distillkit inspect DIR)")


# Stage commands that live in their own modules (each imports typer and its stage's config class at module level).
from distillkit.cli.plan_cmd import plan as _plan  # noqa: E402

app.command("plan")(_plan)

from distillkit.cli.train_cmd import train as _train  # noqa: E402
app.command("train")(_train)
from distillkit.cli.eval_cmd import eval_ as _eval  # noqa: E402
app.command("eval")(_eval)
from distillkit.cli.study_cmd import study as _study  # noqa: E402
app.command("study")(_study)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
