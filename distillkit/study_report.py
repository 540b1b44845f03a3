"""report.md, study.png, gap_closed.png and curves.png of a study, from its result files only (distillkit.study_results).

Sections: the arms; the starting point (per-domain ratio ppl_S/ppl_T of the checkpoint every arm branches from,
and the weights DDK's Eq. 1 and the log-ratio variant give it); one table per metric (mean ± 95 % CI over seeds,
paired Δ vs the baseline, verdict, detectable); the gap closed per domain and arm; per-domain perplexity; budget
and loss per stage; the runs. Keys a result file lacks (files written before a metric existed) leave their
tables out.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

from distillkit.choices import TEACHER_MODE
from distillkit.study import METRICS, PRIMARY, Metric, StudyRecipe, domain_by_seed, domain_values, summarize, value

PAPER_RATIOS = (1.2, 1.8)  # DDK's per-domain ppl_S/ppl_T at the start (its Fig. 3): the regime it was published in



def _shown(path) -> str:
    """A recipe's path as a reader of the committed report can find it: distillkit/pipelines/NAME for a packaged
    recipe (in the repository or an installed copy), else relative to the working directory when it lies under it."""
    from pathlib import Path

    p = Path(path).resolve()
    if p.parent.name == "pipelines" and p.parent.parent.name == "distillkit":
        return f"distillkit/pipelines/{p.name}"
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)

def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _fine(fmt: str, *xs: float | None) -> str:
    """`fmt` ("{:.Nf}") with more decimals where it would round the smallest nonzero |x| to fewer than two
    significant digits (a paired difference of 0.014 ppl shows as 0.014, not 0.01), at most 6."""
    m = re.fullmatch(r"\{:\.(\d+)f\}", fmt)
    vals = [abs(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x) and x != 0]
    if not m or not vals:
        return fmt
    need = 1 - math.floor(math.log10(min(vals)))  # decimals that show two significant digits
    return "{:.%df}" % min(6, max(int(m.group(1)), need))


def _ci(e, fmt: str) -> str:
    if e is None:
        return "–"
    if e.n < 2:
        return f"{_f(e.mean, fmt)} (n=1)"
    fmt = _fine(fmt, e.mean, e.hi - e.lo)
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


def _precondition_section(rec: StudyRecipe, results: Mapping[tuple[str, int], Mapping[str, Any]]) -> list[str]:
    """The teacher against the precondition's arm (the study's [precondition], checked before any other arm ran)."""
    import json

    pre_file = rec.results / "precondition.json"
    if rec.precondition is None or not pre_file.is_file():
        return []
    r = json.loads(pre_file.read_text(encoding="utf-8"))
    pre = rec.precondition
    runs = [results[(pre.arm, x)] for x in pre.seeds if (pre.arm, x) in results]
    keys = [k for k in ("rouge_l", "exact_match", "eos_rate", "answer_tokens", "ppl") if k in r.get("teacher_metrics", {})]

    def cell(k: str, v: float | None) -> str:
        if v is None:
            return "–"
        return f"{v:.1f}" if k == "answer_tokens" else f"{100 * v:.2f}" if k in ("rouge_l", "exact_match", "eos_rate") else f"{v:.3f}"

    rows = [["teacher (reference)"] + [cell(k, r["teacher_metrics"].get(k)) for k in keys]]
    for x, run in zip(pre.seeds, runs):
        rows.append([f"{pre.arm} seed {x}"] + [cell(k, run.get("metrics", {}).get(k)) for k in keys])
    names = {"rouge_l": "ROUGE-L", "exact_match": "exact match %", "eos_rate": "stopped at EOS %", "answer_tokens": "answer tokens",
             "ppl": "test ppl"}
    verdict = "**holds**" if r["passed"] else "**fails: no other arm ran**"
    return ["## Precondition: is the teacher ahead?", "",
            f"Checked before any other arm ran: the teacher's {r['metric']} must exceed arm `{pre.arm}`'s (seeds {list(pre.seeds)}) by "
            f"at least {r['margin']:g}. Gap {r['gap']:+.4f}: {verdict}. ROUGE-L, exact match and EOS rate in percent.", ""] + \
        _table(["model"] + [names[k] for k in keys], rows) + [""]


def write_report(rec: StudyRecipe, results: Mapping[tuple[str, int], Mapping[str, Any]],
                 reference: Mapping[str, Any] | None, budgets: Mapping[str, Any], plots: bool = True) -> Path:
    arms = [a for a in rec.arms if any(k[0] == a for k in results)]
    lines = [f"# Study: {rec.name}", ""]
    seeds_done = {a: sorted(s for (x, s) in results if x == a) for a in arms}
    lines += [
        f"Recipe `{_shown(rec.path)}`; score artifact `{rec.scores}`; budget **{rec.budget.describe()}**, equal for every arm; "
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
    lines += _precondition_section(rec, results)
    arm_rows = [[a, ", ".join(f"{k} = {v}" for k, v in rec.arms[a].plan.items()) or "–",
                 ", ".join(f"{k} = {v}" for k, v in rec.arms[a].train.items()) or "–", ", ".join(map(str, seeds_done[a]))]
                for a in arms]
    lines += ["## Arms", ""] + _table(["arm", "plan overrides", "train overrides", "seeds done"], arm_rows) + [""]
    shared = [f"[{t}] " + ", ".join(f"{k} = {v}" for k, v in d.items()) for t, d in (("plan", rec.plan), ("train", rec.train), ("eval", rec.eval)) if d]
    if shared:
        lines += ["Shared by every arm: " + "; ".join(shared) + ".", ""]
    lines += _branching_section(results, reference)
    summaries: dict[str, list] = {}
    for m in metrics_present(results):
        s = summarize(results, arms, rec.baseline, m)
        summaries[m.key] = s
        lines += [f"## {m.label}" + (" — higher is better" if m.higher_is_better else " — lower is better"), ""]
        rows, apart = [], []
        for a in s:
            if a.arm != rec.baseline and not _comparable(rec, m, a.arm, rec.baseline):
                apart.append(a.arm)
                rows.append([a.arm, str(a.estimate.n), _pm(a.estimate, m.fmt), "not comparable (see below)", "", "–", "–"])
                continue
            rows.append([f"**{a.arm}**" if a.arm == rec.baseline else a.arm, str(a.estimate.n), _pm(a.estimate, m.fmt),
                         "(baseline)" if a.arm == rec.baseline else _ci(a.paired, m.fmt),
                         _ci(a.paired_prompts, m.fmt) if m.key == "rouge_l" and a.arm != rec.baseline else "",
                         a.verdict, _f(a.detectable, _fine(m.fmt, a.detectable))])
        header = ["arm", "seeds", "mean ± 95 % CI", "Δ vs baseline [95 % CI]", "Δ over prompts [95 % CI]", "verdict", "detectable"]
        if m.key != "rouge_l":
            header.pop(4)
            rows = [r[:4] + r[5:] for r in rows]
        lines += _table(header, rows) + [""]
        if apart:
            lines += [f"Not compared with {rec.baseline}: {', '.join(apart)}. " + _KL_APART, ""]
        refs = [f"{label} {_f(value(v, m.key) * m.scale, m.fmt)}" for label, v in (reference or {}).get("models", {}).items()
                if value(v, m.key) is not None]
        if refs:
            lines += ["Reference (one evaluation, same prompts and sampling seeds): " + "; ".join(refs) + ".", ""]
    lines += _compare_section(results, rec)
    if plots and summaries:
        key = next((k for k in PRIMARY if k in summaries), next(iter(summaries)))
        if _plot(summaries[key], rec, rec.results / "study.png"):
            lines += ["![study](study.png)", ""]
    kl_apart = frozenset(a for a in arms if teacher_mode(rec, a) != teacher_mode(rec, rec.baseline))
    lines += _gap_sections(results, arms, rec.baseline, kl_apart)
    if plots and _plot_gap(results, arms, rec.results / "gap_closed.png"):
        lines += ["![gap closed per domain](gap_closed.png)", ""]
    lines += _domain_section(results, arms)
    lines += _train_section(results, arms, budgets)
    if plots and _plot_curves(results, arms, rec.results / "curves.png"):
        lines += ["![training loss](curves.png)", ""]
    lines += _runs_section(results, reference)
    out = rec.results / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _compare_section(results, rec: StudyRecipe) -> list[str]:
    """The recipe's `compare` pairs: each arm against its own reference arm, paired by seed (and by prompt for
    ROUGE-L), e.g. a divergence with POCL against the same divergence without."""
    pairs = [(a, r) for a, r in rec.compare if any(k[0] == a for k in results) and any(k[0] == r for k in results)]
    if not pairs:
        return []
    rows = []
    for m in metrics_present(results):
        for arm, ref in pairs:
            s = summarize(results, [ref, arm], ref, m)
            if len(s) < 2 or not _comparable(rec, m, arm, ref):
                continue
            a = s[1]
            n = a.paired.n if a.paired is not None else 0
            rows.append([m.label, f"{arm} − {ref}", str(n), _ci(a.paired, m.fmt),
                         _ci(a.paired_prompts, m.fmt) if m.key == "rouge_l" else "", a.verdict or "too few runs",
                         _f(a.detectable, m.fmt)])
    if not rows:
        return []
    return (["## Paired comparisons besides the baseline", "",
             "Each arm against the arm named with it in the recipe's `compare`, paired by training seed (and, for ROUGE-L, "
             "by held-out prompt), read as the tables above.", ""]
            + _table(["metric", "comparison", "seeds", "Δ [95 % CI]", "Δ over prompts [95 % CI]", "verdict", "detectable"], rows)
            + [""])


_KL_APART = ("Their held-out KL is measured against the online teacher's full distribution, the other side's "
             "against the stored top-k log-probs (plus the tail bucket): two different quantities, so no difference "
             "is computed (each arm's own before → after is still meaningful).")


def teacher_mode(rec: StudyRecipe, arm: str) -> str:
    """The arm's `teacher_mode` (its override, the shared [train] value, or train's default)."""
    return str(rec.arms[arm].train.get("teacher_mode", rec.train.get("teacher_mode", TEACHER_MODE)))


def _comparable(rec: StudyRecipe, m: Metric, arm: str, ref: str) -> bool:
    """KL metrics compare only between arms that measure KL against the same teacher signal."""
    return not m.key.startswith("kl") or teacher_mode(rec, arm) == teacher_mode(rec, ref)


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


def _start(results) -> dict[str, dict[str, list[float]]]:
    """Per domain, over every run: the teacher's perplexity, the student's before training and its KL before
    (train's held-out measurement of the starting checkpoint: the same in every run of a study)."""
    out: dict[str, dict[str, list[float]]] = {}
    for _k, r in sorted(results.items()):
        dom = r.get("domains", {})
        for d, b in (dom.get("train_ppl_before") or {}).items():
            t = (dom.get("teacher_ppl") or {}).get(d)
            if t is None:
                continue
            row = out.setdefault(d, {"teacher": [], "before": [], "kl": []})
            row["teacher"].append(float(t))
            row["before"].append(float(b))
            if (dom.get("kl_before") or {}).get(d) is not None:
                row["kl"].append(float(dom["kl_before"][d]))
    return out


def _start_ratios(results) -> dict[str, float]:
    return {d: (sum(v["before"]) / len(v["before"])) / (sum(v["teacher"]) / len(v["teacher"])) for d, v in _start(results).items()}


def _branching_section(results, reference) -> list[str]:
    """The starting checkpoint's per-domain ratio ppl_S/ppl_T (train's held-out measurement before training, on the
    documents every gap closed is measured on) and the weights DDK's Eq. 1 and the log-ratio variant give it."""
    start = _start(results)
    if len(start) < 2:
        return []
    from distillkit.errors import DataError
    from distillkit.mixture import ddk_weights, log_ratio_weights

    at_start = _start_ratios(results)
    doms = sorted(start, key=lambda d: (-at_start[d], d))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    teacher = [mean(start[d]["teacher"]) for d in doms]
    before = [mean(start[d]["before"]) for d in doms]
    ratio = [b / t for b, t in zip(before, teacher)]
    try:
        eq1, logr = ddk_weights(before, teacher), log_ratio_weights(before, teacher, 1.0)
    except DataError:  # a non-finite perplexity: show the ratios without weights
        eq1 = logr = [math.nan] * len(doms)
    ref = _reference_ratios(reference)
    header = ["domain", "teacher ppl", "student ppl", "ratio S/T", "KL", "Eq. 1 weight", "log-ratio weight (τ 1)"]
    if ref:
        header.append("ratio (eval, reference)")
    rows = []
    for i, d in enumerate(doms):
        kl = start[d]["kl"]
        row = [d, _f(teacher[i]), _f(before[i]), _f(ratio[i], "{:.3f}"), _f(mean(kl), "{:.3f}") if kl else "–",
               _f(eq1[i], "{:.3f}"), _f(logr[i], "{:.3f}")]
        if ref:
            row.append(_f(ref.get(d), "{:.3f}"))
        rows.append(row)
    lo, hi = PAPER_RATIOS
    inside = sum(lo <= r <= hi for r in ratio)
    srt = sorted(ratio)
    median = srt[len(srt) // 2] if len(srt) % 2 else (srt[len(srt) // 2 - 1] + srt[len(srt) // 2]) / 2
    spread = max(max(abs(x - before[i]) / before[i] for x in start[d]["before"]) for i, d in enumerate(doms))
    lines = ["## Starting point: the checkpoint every arm branches from", "",
             "Per domain on the held-out documents (train's measurement before training; lagging domains first): the "
             "teacher's and the starting student's perplexity, their ratio, KL(teacher‖student) per token, and the "
             "sampling weights DDK's Eq. 1 (`softmax(ratio)`) and the log-ratio variant (`ratio / Σ ratio`) give it.", ""]
    lines += _table(header, rows) + [""]
    lines += [f"Ratios {min(ratio):.2f}–{max(ratio):.2f} (median {median:.2f}); {inside} of {len(ratio)} domains inside "
              f"DDK's published range {lo}–{hi}; Eq. 1's largest/smallest weight exp(max − min) = "
              f"{math.exp(min(max(ratio) - min(ratio), 700.0)):.3g} (≈ 1.8 in the paper)."]
    if spread > 1e-3:
        lines += [f"**The runs disagree about the start** (student perplexity before training differs by up to "
                  f"{100 * spread:.2f} % between runs): did every run start from the same checkpoint and documents?"]
    return lines + [""]


def _reference_ratios(reference) -> dict[str, float]:
    """Per domain: the initial student's / the teacher's perplexity from the reference evaluation, if there is one."""
    models = (reference or {}).get("models", {})
    teacher = next((v for v in models.values() if v.get("role") == "teacher"), None)
    initial = models.get("initial") or next((v for v in models.values() if v.get("role") != "teacher"), None)
    if not teacher or not initial:
        return {}
    t, s = teacher.get("domains", {}).get("ppl", {}), initial.get("domains", {}).get("ppl", {})
    return {d: s[d] / t[d] for d in s if d in t and t[d]}


def _gap_sections(results, arms: list[str], baseline: str, kl_apart: frozenset[str] = frozenset()) -> list[str]:
    """Per domain (lagging at the start first) and arm: the share of the gap closed, mean over seeds, and for the
    other arms the paired difference to the baseline (same seeds), in points; none for KL in `kl_apart` arms
    (KL against another teacher signal than the baseline's)."""
    ratios = _start_ratios(results)
    lines: list[str] = []
    for key, what in (("gap_closed", "Perplexity gap closed per domain, % = (ppl_before − ppl_after) / (ppl_before − ppl_teacher)"),
                      ("kl_closed", "KL closed per domain, % = (KL_before − KL_after) / KL_before")):
        per = {a: domain_by_seed(results, a, key) for a in arms}
        doms = sorted({d for v in per.values() for d in v}, key=lambda d: (-ratios.get(d, 0.0), d))
        if len(doms) < 2:  # one domain: the metric tables above already hold it
            continue
        base = per.get(baseline, {})
        rows = []
        for d in doms:
            row = [d, _f(ratios.get(d), "{:.2f}")]
            for a in arms:
                xs = per[a].get(d, {})
                if not xs:
                    row.append("–")
                    continue
                cell = f"{100 * sum(xs.values()) / len(xs):.1f}"
                common = sorted(set(xs) & set(base.get(d, {})))
                if a != baseline and common and not (key == "kl_closed" and a in kl_apart):
                    delta = 100 * sum(xs[s] - base[d][s] for s in common) / len(common)
                    cell += f" ({delta:+.1f})"
                row.append(cell)
            rows.append(row)
        lagging = []
        for a in arms:
            names = [r.get("gap", {}).get("lagging", {}).get(key) for (x, _s), r in sorted(results.items()) if x == a]
            names = [n for n in names if n]
            if names:
                most_first = sorted(set(names), key=lambda n: (-names.count(n), n))
                lagging.append(f"{a}: " + ", ".join(f"{n} ×{names.count(n)}" for n in most_first))
        excluded = sorted({d for r in results.values() for d in r.get("gap", {}).get("excluded", [])}) if key == "gap_closed" else []
        lines += [f"## {what}", "", f"Mean over seeds; in brackets the paired difference to {baseline} (same seeds), in points. "
                  "Domains ordered by their ratio ppl_S/ppl_T at the start, lagging first.", ""]
        lines += _table(["domain", "ratio at start", *arms], rows) + [""]
        if lagging:
            lines += ["Lagging domain (the minimum) per run — " + "; ".join(lagging) + ".", ""]
        if excluded:
            lines += [f"Left out (starting ratio below {_min_ratio(results):.2f}: no gap to close): {', '.join(excluded)}.", ""]
    return lines


def _min_ratio(results) -> float:
    return next((float(r["gap"]["min_ratio"]) for r in results.values() if "min_ratio" in r.get("gap", {})), math.nan)


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


def _plot_gap(results, arms: list[str], path: Path) -> bool:
    """gap_closed.png: per domain (lagging at the start on the left), each arm's ppl gap closed, mean over seeds
    (bar) and every seed (dots)."""
    per = {a: domain_by_seed(results, a, "gap_closed") for a in arms}
    ratios = _start_ratios(results)
    doms = sorted({d for v in per.values() for d in v}, key=lambda d: (-ratios.get(d, 0.0), d))
    if not doms:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(doms) + 2), 4.2))
    width = 0.8 / max(1, len(arms))
    for i, a in enumerate(arms):
        for j, d in enumerate(doms):
            xs = list(per[a].get(d, {}).values())
            if not xs:
                continue
            x = j - 0.4 + width * (i + 0.5)
            ax.bar(x, 100 * sum(xs) / len(xs), width, color=f"C{i}", alpha=0.75, label=a if j == 0 else None)
            ax.scatter([x] * len(xs), [100 * v for v in xs], color="k", s=6, zorder=3)
    ax.set_xticks(range(len(doms)), [f"{d}\n{ratios[d]:.2f}" if d in ratios else d for d in doms], fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("ppl gap closed, % (bars: mean; dots: seeds)")
    ax.set_xlabel("domain and its ratio ppl_S/ppl_T at the start (lagging first)")
    ax.legend(fontsize=8)
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
