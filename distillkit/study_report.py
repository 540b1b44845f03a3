"""report.md, study.png and curves.png of a study, from its result files only (distillkit.study_results)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from distillkit.study import METRICS, Metric, StudyRecipe, domain_values, summarize, value


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ci(e, fmt: str) -> str:
    if e is None:
        return "–"
    if e.n < 2:
        return f"{_f(e.mean, fmt)} (n=1)"
    return f"{_f(e.mean, fmt)} [{_f(e.lo, fmt)}, {_f(e.hi, fmt)}]"


def _pm(e, fmt: str) -> str:
    if e.n < 2:
        return f"{_f(e.mean, fmt)} (n=1)"
    return f"{_f(e.mean, fmt)} ± {_f(e.half, fmt)}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def metrics_present(results: Mapping) -> list[Metric]:
    return [m for m in METRICS if any(value(r, m.key) is not None for r in results.values())]


def write_report(rec: StudyRecipe, results: Mapping[tuple[str, int], Mapping[str, Any]],
                 reference: Mapping[str, Any] | None, budgets: Mapping[str, Any], plots: bool = True) -> Path:
    arms = [a for a in rec.arms if any(k[0] == a for k in results)]
    lines = [f"# Study: {rec.name}", ""]
    seeds_done = {a: sorted(s for (x, s) in results if x == a) for a in arms}
    lines += [
        f"Recipe `{rec.path}`; score artifact `{rec.scores}`; budget **{rec.budget.describe()}**, equal for every arm; "
        f"baseline **{rec.baseline}**; training seeds planned {list(rec.seeds)}.",
        "",
        "Each cell: mean over training seeds with its 95 % confidence interval (t distribution, n seeds). "
        "Δ: the paired difference to the baseline, run by run on the same training seed, data and evaluation prompts, "
        "with its 95 % CI; *verdict* reads that CI (better / worse when it excludes 0). *Detectable*: the smallest true "
        "difference this design finds at 95 % with 80 % power, given the observed spread of Δ. "
        "Δ over prompts: the per-prompt ROUGE-L difference (averaged over the seeds both arms have), CI over prompts: "
        "the evaluation's own noise, without the spread between training seeds.",
        "",
    ]
    arm_rows = [[a, ", ".join(f"{k} = {v}" for k, v in rec.arms[a].plan.items()) or "–",
                 ", ".join(f"{k} = {v}" for k, v in rec.arms[a].train.items()) or "–", ", ".join(map(str, seeds_done[a]))]
                for a in arms]
    lines += ["## Arms", ""] + _table(["arm", "plan overrides", "train overrides", "seeds done"], arm_rows) + [""]
    shared = [f"[{t}] " + ", ".join(f"{k} = {v}" for k, v in d.items()) for t, d in (("plan", rec.plan), ("train", rec.train), ("eval", rec.eval)) if d]
    if shared:
        lines += ["Shared by every arm: " + "; ".join(shared) + ".", ""]
    summaries: dict[str, list] = {}
    for m in metrics_present(results):
        s = summarize(results, arms, rec.baseline, m)
        summaries[m.key] = s
        lines += [f"## {m.label}" + (" — higher is better" if m.higher_is_better else " — lower is better"), ""]
        rows = []
        for a in s:
            rows.append([f"**{a.arm}**" if a.arm == rec.baseline else a.arm, str(a.estimate.n), _pm(a.estimate, m.fmt),
                         "(baseline)" if a.arm == rec.baseline else _ci(a.paired, m.fmt),
                         _ci(a.paired_prompts, m.fmt) if m.key == "rouge_l" and a.arm != rec.baseline else "",
                         a.verdict, _f(a.detectable, m.fmt)])
        header = ["arm", "seeds", "mean ± 95 % CI", "Δ vs baseline [95 % CI]", "Δ over prompts [95 % CI]", "verdict", "detectable"]
        if m.key != "rouge_l":
            header.pop(4)
            rows = [r[:4] + r[5:] for r in rows]
        lines += _table(header, rows) + [""]
        refs = [f"{label} {_f(value(v, m.key) * m.scale, m.fmt)}" for label, v in (reference or {}).get("models", {}).items()
                if value(v, m.key) is not None]
        if refs:
            lines += ["Reference (one evaluation, same prompts and sampling seeds): " + "; ".join(refs) + ".", ""]
    if plots and summaries:
        key = "rouge_l" if "rouge_l" in summaries else next(iter(summaries))
        if _plot(summaries[key], rec, rec.results / "study.png"):
            lines += ["![study](study.png)", ""]
    lines += _domain_section(results, arms)
    lines += _train_section(results, arms, budgets)
    if plots and _plot_curves(results, arms, rec.results / "curves.png"):
        lines += ["![training loss](curves.png)", ""]
    lines += _runs_section(results, reference)
    out = rec.results / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _domain_section(results, arms: list[str]) -> list[str]:
    doms = sorted({d for r in results.values() for d in r.get("domains", {}).get("ppl", {})})
    if len(doms) < 2:
        return []
    rows = []
    for d in doms:
        row = [d]
        for a in arms:
            xs = domain_values(results, a).get(d, [])
            row.append(_f(sum(xs) / len(xs)) if xs else "–")
        rows.append(row)
    return ["## Held-out perplexity per domain (mean over seeds)", ""] + _table(["domain", *arms], rows) + [""]


def _train_section(results, arms: list[str], budgets: Mapping[str, Any]) -> list[str]:
    rows = []
    for a in arms:
        runs = [r for (x, _s), r in sorted(results.items()) if x == a]
        tr = [r.get("train", {}) for r in runs]
        stages = sorted({k for t in tr for k in t.get("loss_by_stage", {})}, key=int)
        per_stage = "; ".join(f"{s}: {sum(t['loss_by_stage'][s] for t in tr if s in t.get('loss_by_stage', {})) / max(1, sum(1 for t in tr if s in t.get('loss_by_stage', {}))):.3f}"
                              for s in stages)
        b = budgets.get(a, {})
        tok = [t["tokens"] for t in tr if t.get("tokens")]
        rows.append([a, _f(b.get("sample_passes")), str(b.get("steps", "–")), f"{sum(tok) / len(tok):,.0f}" if tok else "–", per_stage])
    return (["## Training: budget and loss per curriculum stage (mean over seeds)", ""]
            + _table(["arm", "sample passes", "steps", "trained tokens", "mean loss by stage"], rows) + [""])


def _runs_section(results, reference) -> list[str]:
    rows = []
    items = sorted(results.items())
    if reference:
        items = [(("reference", -1), reference)] + items
    for (a, s), r in items:
        m = r.get("machine", {})
        cpu = m.get("gpu") or m.get("cpu", "?")
        bf16 = ",".join(m.get("cpu_bf16", [])) or "no native bf16"
        tr, ev = r.get("train", {}), r.get("eval", {})
        rows.append([a if s < 0 else f"{a} s{s}", f"{cpu} ({bf16}, {m.get('torch_threads', '?')} threads)",
                     _f(tr.get("wall_s"), "{:.0f}"), _f(tr.get("tokens_per_s"), "{:.0f}"), _f(ev.get("wall_s"), "{:.0f}"),
                     _f(r.get("wall_s"), "{:.0f}"), r.get("written", "")[:10]])
    return (["## Runs", ""] + _table(["run", "machine", "train s", "train tok/s", "eval s", "wall s", "date"], rows) + [""])


def _plot(summary: list, rec: StudyRecipe, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not summary:
        return False
    m = summary[0].metric
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.6 * len(summary) + 2.2))
    names = [s.arm for s in summary]
    for i, s in enumerate(summary):
        e = s.estimate
        xerr = None if e.n < 2 else [[e.mean - e.lo], [e.hi - e.mean]]
        ax1.errorbar([e.mean], [i], xerr=xerr, fmt="o", color="C0" if s.arm != rec.baseline else "C3", capsize=4)
        ax1.scatter(list(s.per_seed.values()), [i] * len(s.per_seed), marker="x", color="grey", s=14, zorder=3)
    ax1.set_yticks(range(len(names)), names)
    ax1.set_xlabel(m.label)
    ax1.set_title("per arm: mean, 95 % CI, seeds (x)")
    others = [s for s in summary if s.paired is not None]
    for i, s in enumerate(others):
        d = s.paired
        xerr = None if d.n < 2 else [[d.mean - d.lo], [d.hi - d.mean]]
        ax2.errorbar([d.mean], [i], xerr=xerr, fmt="o", color="C2", capsize=4)
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_yticks(range(len(others)), [s.arm for s in others])
    ax2.set_xlabel(f"Δ vs {rec.baseline} ({'higher' if m.higher_is_better else 'lower'} is better)")
    ax2.set_title("paired difference, 95 % CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_curves(results, arms: list[str], path: Path) -> bool:
    curves = {(a, s): r["train"]["curve"] for (a, s), r in results.items() if r.get("train", {}).get("curve")}
    if not curves:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, a in enumerate(arms):
        for j, ((arm, s), c) in enumerate(sorted((k, v) for k, v in curves.items() if k[0] == a)):
            ax.plot([p[0] for p in c], [p[1] for p in c], color=f"C{i}", alpha=0.8, lw=1, label=a if j == 0 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (at each stage's T and λ)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


__all__ = ["write_report", "metrics_present"]
