"""`distillkit eval`: options, and the rich summary of an eval artifact (benchmarks, held-out perplexity)."""

from __future__ import annotations

from typing import List, Optional

import typer

from distillkit.cli.common import ConfigOpt, OverwriteOpt, PrintOpt, ResumeOpt, SetOpt, handled, resolve_or_print


def eval_(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Model to evaluate (repeat for several): HF dir, .gguf, alias; label=spec names it."),
    teacher: Optional[str] = typer.Option(None, "--teacher", "-t", help="Teacher: evaluated too; the reference for perplexity ratios."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output artifact directory."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-eval tasks, comma-separated (auto | none | arc_easy,piqa,...)."),
    include_path: Optional[List[str]] = typer.Option(None, "--include-path", help="Folder of extra lm-eval task YAMLs (repeatable)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data (or a score artifact) for held-out perplexity per domain and ROUGE-L."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N documents per task and per domain (smoke runs)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="Few-shot examples for every task (default: the task's own)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="lm-eval batch size."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="The student before training (a --model): gap closed is measured from it."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto | float32 | bfloat16."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Sampling seeds for ROUGE-L, comma-separated (default 10,20,30,40,50)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Longest generated answer for ROUGE-L."),
    domain_field: Optional[str] = typer.Option(None, "--domain-field", help="Column naming the domain."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="Column with plain text."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate held-out samples to this many tokens."),
    max_per_domain: Optional[int] = typer.Option(None, "--max-per-domain", help="At most N documents per domain before the split (as in score)."),
    plot: Optional[bool] = typer.Option(None, "--plot/--no-plot", help="Write benchmarks.png and domains.png."),
    config: Optional[str] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    print_config: bool = PrintOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Evaluate models side by side: lm-eval benchmarks (offline data), held-out perplexity per domain, ROUGE-L."""
    with handled():
        from distillkit.pipelines import eval as stage

        opts = dict(models=tuple(model) if model else None, teacher=teacher, out=out, tasks=tasks,
                    include_path=tuple(include_path) if include_path else None, data=data, limit=limit,
                    num_fewshot=num_fewshot, batch_size=batch_size, baseline=baseline, dtype=dtype, device=device,
                    gen_seeds=seeds, gen_max_new_tokens=max_new_tokens, domain_field=domain_field, text_field=text_field,
                    max_length=max_length, max_per_domain=max_per_domain, plot=plot)
        cfg = resolve_or_print(stage.EvalConfig, config, set_, opts, print_config, "eval")
        path = stage.run(cfg, resume=resume, overwrite=overwrite)
        summary(path)


def summary(path) -> None:
    """Benchmarks (every metric of the requested tasks) and held-out perplexity per domain, models as columns."""
    from rich.table import Table

    from distillkit.artifacts import read_artifact
    from distillkit.evaluation.report import GEN_TASK, PPL_TASK, _fmt_metric, benchmark_grid
    from distillkit.progress import console

    art = read_artifact(path, "eval")
    meta = art.manifest["eval"]
    models = [m["label"] for m in meta["models"]]
    results = art.table("results.arrow")
    grid = benchmark_grid(results, meta["tasks"], models)
    if grid:
        t = Table(title="benchmarks (lm-eval, offline data): percent ± stderr", title_justify="left")
        for c in ("task", "metric", "n", *models):
            t.add_column(c, justify="left" if c in ("task", "metric") else "right", overflow="fold")
        for task, metric, vals in grid:
            n = next((v[2] for v in vals.values() if v[2] is not None), None)
            t.add_row(task, metric, f"{n:,}" if n is not None else "",
                      *[_fmt_metric(*(vals.get(m, (None, None, None))[:2]), metric) for m in models])
        if meta.get("limit"):
            t.caption = f"--limit {meta['limit']}: a smoke run, not comparable with full-set figures"
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
        t.caption = "(r×T): perplexity over the teacher's" + (f"; gap closed from the baseline {meta['baseline']}" if meta.get("baseline") else "")
        console.print(t)
    files = ", ".join(f for f in art.files() if not f.startswith("."))
    console.print(f"[green]wrote[/] {path} ({files})")
