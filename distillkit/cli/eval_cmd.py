"""`distillkit eval`: options, and the rich summary of an eval artifact (benchmarks, held-out perplexity)."""

from __future__ import annotations

from distillkit.cli.options import StageArgs, stage_command
from distillkit.pipelines.eval import EvalConfig


# The old spellings --model, --seeds and --max-new-tokens stay as hidden aliases: scripts and tests use them.
@stage_command(EvalConfig, "eval", short={"models": "-m", "teacher": "-t", "out": "-o", "data": "-d", "batch_size": "-b"},
               aliases={"models": ["--model"], "gen_seeds": ["--seeds"], "gen_max_new_tokens": ["--max-new-tokens"]})
def eval_(args: StageArgs) -> None:
    """Evaluate models side by side: lm-eval benchmarks (offline data), held-out perplexity per domain, ROUGE-L."""
    from distillkit.pipelines import eval as stage

    res = stage.run(args.resolve(), resume=args.resume, overwrite=args.overwrite)
    summary(res.path)


def summary(path) -> None:
    """Benchmarks (every metric of the requested tasks) and held-out perplexity per domain, models as columns."""
    from rich.table import Table

    from distillkit.artifacts import read_artifact
    from distillkit.evaluation.report import GEN_TASK, PPL_TASK, _fmt_metric, benchmark_grid
    from distillkit.progress import console

    art = read_artifact(path, "eval")
    from distillkit.records import EvalRecord

    meta = EvalRecord.from_manifest(art.manifest["eval"], f"{path}/manifest.json")
    models = [m.label for m in meta.models]
    results = art.table("results.arrow")
    grid = benchmark_grid(results, list(meta.tasks), models)
    if grid:
        t = Table(title="benchmarks (lm-eval, offline data): percent ± stderr", title_justify="left")
        for c in ("task", "metric", "n", *models):
            t.add_column(c, justify="left" if c in ("task", "metric") else "right", overflow="fold")
        for task, metric, vals in grid:
            n = next((v[2] for v in vals.values() if v[2] is not None), None)
            t.add_row(task, metric, f"{n:,}" if n is not None else "",
                      *[_fmt_metric(*(vals.get(m, (None, None, None))[:2]), metric) for m in models])
        if meta.limit:
            t.caption = f"--limit {meta.limit}: a smoke run, not comparable with full-set figures"
        console.print(t)
    summary_rows = benchmark_grid(results, [PPL_TASK, GEN_TASK], models)
    if "domains.arrow" in art.files():
        d = art.table("domains.arrow").to_pylist()
        by = {(r["model"], r["domain"]): r for r in d}
        t = Table(title="held-out perplexity per domain", title_justify="left")
        for c in ("domain", "docs", *models):
            t.add_column(c, justify="left" if c == "domain" else "right", overflow="fold")
        for dom in sorted({r["domain"] for r in d}):
            first = by[(models[0], dom)]
            cells = []
            for m in models:
                r = by[(m, dom)]
                extra = f" ({r['ppl_ratio']:.2f}×T)" if r["ppl_ratio"] is not None and r["role"] != "teacher" else ""
                cells.append(f"{r['ppl']:.2f}{extra}")
            t.add_row(dom + ("" if first["heldout"] else "*"), f"{first['num_samples']:,}", *cells)
        for task, metric, vals in summary_rows:
            cells = [f"{vals[m][0]:.3f}" if m in vals and metric != "ppl" else (f"{vals[m][0]:.2f}" if m in vals else "–") for m in models]
            t.add_row(f"[bold]{task}: {metric}[/]", "", *cells)
        t.caption = "(r×T): perplexity over the teacher's" + (f"; gap closed from the baseline {meta.baseline}" if meta.baseline else "")
        console.print(t)
    files = ", ".join(f for f in art.files() if not f.startswith("."))
    console.print(f"[green]wrote[/] {path} ({files})")
