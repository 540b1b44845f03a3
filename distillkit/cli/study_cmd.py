"""`distillkit study RECIPE`: arms × seeds at one budget, with confidence intervals (docs/study.md)."""

from __future__ import annotations

from typing import Optional

import typer

from distillkit.cli.common import handled


def study(
    recipe: str = typer.Argument(..., help="A study recipe TOML (arms, seeds, budget, evaluation), or a shipped one's name."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Root for the runs' artifacts (default: the recipe's out)."),
    results: Optional[str] = typer.Option(None, "--results", help="Folder for the per-run result files and the report (default: the recipe's results, else <out>/results)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Runs side by side, each in its own process (default: the recipe's jobs, else 1)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads per run (default: the recipe's threads, else cores / jobs)."),
    report_only: bool = typer.Option(False, "--report-only", help="Rewrite the report from the result files; run nothing."),
    status: bool = typer.Option(False, "--status", help="Show where every run stands (done, training at checkpoint N, evaluating, interrupted, pending); run and write nothing."),
    worker: bool = typer.Option(False, "--worker", hidden=True, help="Internal: one of the --jobs processes."),
) -> None:
    """Compare arms (plan/train overrides) over training seeds at an equal budget: one result file per run, a report with 95 % CIs.

    Finished runs are skipped (also when their result files came from another machine); a killed study resumes.
    """
    with handled():
        from distillkit.pipelines.study import StudyOptions, format_states, run
        from distillkit.progress import console

        res = run(StudyOptions(recipe, out, results, jobs, threads, report_only, worker, status))
        if worker:
            return
        if res.status is not None:
            typer.echo(format_states(res.status))
            return
        if res.report is not None:
            console.print(f"[green]study[/]: {len(res.ran)} run(s) done, {len(res.skipped)} already finished")
            typer.echo(f"report: {res.report}")
        else:
            console.print(f"study: no finished run yet (results go to {res.results})")
