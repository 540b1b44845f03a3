"""report.md with tables, and PNG plots (matplotlib, Agg backend): what `distillkit eval` measured.

- ``benchmarks.png``: each benchmark's primary metric (acc_norm, else acc, ...) per model, in percent,
  with lm-eval's standard error as error bars;
- ``domains.png``: per-domain held-out perplexity per model (log scale), teacher first.
Percentages in the report are lm-eval's fractions × 100; perplexities are as measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from distillkit.evaluation.harness import NOT_SCORES, primary_metric

PPL_TASK = "heldout_ppl"
GEN_TASK = "heldout_generation"
_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _is_score(metric: str) -> bool:
    return metric.split(",")[0] not in NOT_SCORES


def _fmt_metric(value: float | None, stderr: float | None, metric: str) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    if not _is_score(metric):
        return num(value) + (f" ± {num(stderr)}" if stderr is not None else "")
    return f"{100 * value:.1f}" + (f" ± {100 * stderr:.1f}" if stderr is not None else "")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def benchmark_grid(results: pa.Table, tasks: Sequence[str], models: Sequence[str]) -> list[tuple[str, str, dict]]:
    """(task, metric, {model: (value, stderr, n)}) for the requested tasks, in request order."""
    rows = [r for r in results.to_pylist() if r["task"] in tasks]
    grid: dict[tuple[str, str], dict] = {}
    for r in rows:
        grid.setdefault((r["task"], r["metric"]), {})[r["model"]] = (r["value"], r["stderr"], r.get("num_samples"))
    order = {t: i for i, t in enumerate(tasks)}
    return [(t, m, v) for (t, m), v in sorted(grid.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))]


def write_report(out: Path, results: pa.Table, domains: pa.Table | None, meta: dict[str, Any], plots: bool = True) -> list[str]:
    """Write report.md (and the PNGs when `plots`) into `out`; returns the file names written."""
    models = [m["label"] for m in meta["models"]]
    tasks = list(meta.get("tasks", []))
    written = []
    md = [f"# distillkit eval: {', '.join(models)}", ""]
    md.append(_md_table(["model", "role", "path"], [[m["label"], m["role"], f"`{m['path']}`"] for m in meta["models"]], ["l"] * 3))
    md.append("")
    if meta.get("limit"):
        md += [f"**Smoke run**: `--limit {meta['limit']}` (at most {meta['limit']} documents per benchmark task and per domain).", ""]

    grid = benchmark_grid(results, tasks, models)
    if grid:
        md += ["## Benchmarks (lm-evaluation-harness, offline data)", ""]
        header = ["task", "metric", "n", *models]
        rows = []
        for task, metric, vals in grid:
            n = next((v[2] for v in vals.values() if v[2] is not None), None)
            rows.append([task, metric, f"{n:,}" if n is not None else "", *[_fmt_metric(*(vals.get(m, (None, None, None))[:2]), metric) for m in models]])
        md.append(_md_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2)))
        splits = meta.get("task_splits", {})
        notes = ", ".join(f"{t}: {s}" for t, s in splits.items() if s)
        md += ["", "Scores in percent (± lm-eval's standard error); perplexities as measured."
               + (f" Split scored: {notes}." if notes else ""), ""]
        if plots and _plot_benchmarks(grid, models, out / "benchmarks.png"):
            written.append("benchmarks.png")
            md += ["![benchmarks](benchmarks.png)", ""]

    if domains is not None and domains.num_rows:
        md += _domain_section(domains, models, meta)
        if plots:
            _plot_domains(domains, models, out / "domains.png")
            written.append("domains.png")
            md += ["![per-domain perplexity](domains.png)", ""]

    gen = [r for r in results.to_pylist() if r["task"] == GEN_TASK and r["metric"] == "rouge_l"]
    if gen:
        g = meta.get("generation", {})
        md += ["## Instruction following: ROUGE-L of sampled answers", ""]
        md.append(_md_table(["model", "ROUGE-L ×100", "spread over seeds", "prompts"],
                            [[r["model"], f"{100 * r['value']:.2f}", f"{100 * (r['stderr'] or 0):.2f}", f"{r['num_samples']:,}"] for r in gen]))
        md += ["", f"Temperature {g.get('temperature')}, top-p {g.get('top_p')}, at most {g.get('max_new_tokens')} new tokens, "
               f"seeds {g.get('seeds')}; spread = standard deviation of the per-seed means.", ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return ["report.md", *written]


def _domain_section(domains: pa.Table, models: Sequence[str], meta: dict[str, Any]) -> list[str]:
    rows = domains.to_pylist()
    by = {(r["model"], r["domain"]): r for r in rows}
    names = sorted({r["domain"] for r in rows})
    has_teacher = any(r["teacher_ppl"] is not None for r in rows)
    teacher = next((m["label"] for m in meta["models"] if m["role"] == "teacher"), None)
    others = [m for m in models if m != teacher]
    gap_models = [m for m in others if any(by.get((m, d), {}).get("gap_closed") is not None for d in names)]
    header = ["domain", "docs", "tokens", *[f"ppl {m}" for m in models]]
    if has_teacher:
        header += [f"÷ teacher {m}" for m in others]
    header += [f"gap closed {m}" for m in gap_models]
    table = []
    for d in names:
        first = by[(models[0], d)]
        line = [d + ("" if first["heldout"] else "*"), f"{first['num_samples']:,}", f"{first['num_tokens']:,}"]
        line += [num(by[(m, d)]["ppl"]) for m in models]
        if has_teacher:
            line += [num(by[(m, d)]["ppl_ratio"]) for m in others]
        line += [_pct(by[(m, d)]["gap_closed"]) for m in gap_models]
        table.append(line)
    out = ["## Per-domain perplexity on the held-out slice", "", _md_table(header, table), ""]
    notes = ["Token-weighted perplexity of each domain's held-out documents."]
    if has_teacher:
        notes.append("÷ teacher: the model's perplexity over the teacher's (1 = matches the teacher).")
    if gap_models:
        notes.append(f"gap closed: the share of the baseline's ({meta.get('baseline')}) log-perplexity gap to the teacher "
                     "that the model closes (100% = at the teacher, 0% = no better than the baseline).")
    if any(not r["heldout"] for r in rows):
        notes.append("* no held-out documents in this domain: measured on its training rows.")
    return out + [" ".join(notes), ""]


def num(v: float | None) -> str:
    """A perplexity or ratio: two decimals, or three significant digits once it is large."""
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:,.2f}" if abs(v) < 1e5 else f"{v:.3g}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_benchmarks(grid, models: Sequence[str], path: Path) -> bool:
    """Grouped bars: the primary metric of each task, one bar per model, stderr as error bars."""
    per_task: dict[str, dict[str, dict]] = {}
    for task, metric, vals in grid:
        per_task.setdefault(task, {})[metric] = vals
    picks = [(t, m, per_task[t][m]) for t in per_task if (m := primary_metric(list(per_task[t]))) is not None]
    if not picks:
        return False
    plt = _plt()
    width = 0.8 / len(models)
    x = np.arange(len(picks))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(picks) * max(1, len(models)) ** 0.5 + 2), 4.2), layout="constrained")
    for j, m in enumerate(models):
        vals = [v.get(m, (np.nan, None, None)) for _, _, v in picks]
        y = np.array([100 * (a if a is not None else np.nan) for a, _, _ in vals])
        err = np.array([100 * (s or 0.0) for _, s, _ in vals])
        bars = ax.bar(x + (j - (len(models) - 1) / 2) * width, y, width * 0.95, yerr=err, capsize=2,
                      color=_COLORS[j % len(_COLORS)], label=m)
        for b, v, e in zip(bars, y, err):
            if np.isfinite(v):  # above the error bar, not on it
                ax.text(b.get_x() + b.get_width() / 2, v + e + 0.8, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{t}\n({m})" for t, m, _ in picks], fontsize=8)
    ax.set_ylabel("score (%)")
    top = max(100 * (v[0] + (v[1] or 0.0)) for _, _, vals in picks for v in vals.values() if v[0] is not None)
    ax.set_ylim(0, min(105.0, max(10.0, top + 8)))
    ax.set_title("benchmarks (lm-eval, offline data): primary metric per task, ± standard error", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return True


def _plot_domains(domains: pa.Table, models: Sequence[str], path: Path) -> None:
    """Horizontal grouped bars: each domain's held-out perplexity per model, log scale."""
    rows = domains.to_pylist()
    by = {(r["model"], r["domain"]): r["ppl"] for r in rows}
    names = sorted({r["domain"] for r in rows})
    plt = _plt()
    h = 0.8 / len(models)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.35 * len(names) * len(models) + 1.5)), layout="constrained")
    for j, m in enumerate(models):
        v = np.array([by.get((m, d), np.nan) for d in names], dtype=np.float64)
        bars = ax.barh(y + (j - (len(models) - 1) / 2) * h, v, h * 0.95, color=_COLORS[j % len(_COLORS)], label=m)
        for b, val in zip(bars, v):
            if np.isfinite(val):
                ax.text(val, b.get_y() + b.get_height() / 2, " " + num(val), va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xscale("log")
    finite = [p for p in by.values() if p is not None and np.isfinite(p) and p > 0]
    if finite:
        ax.set_xlim(min(finite) / 1.5, max(finite) * 2.5)  # room for the value labels
    ax.set_xlabel("held-out perplexity (log scale, lower is better)")
    ax.set_title("per-domain perplexity on the held-out slice", fontsize=10)
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
