"""Turn a finished (or partial) study directory into docs/results.md tables and plots.

Reads only distillkit artifacts (each opened with distillkit.artifacts.read_artifact, which checks
the manifest's sizes and hashes): train/<arm>-s<seed>/{heldout,metrics,mixture}.arrow and
eval-s<seed>/results.arrow. Every table cell is a mean ± sample standard deviation over the seeds that
have the arm (n is printed); each arm's paired difference to arm b (same seed) is given with its 95 % CI,
verdict and smallest detectable difference (distillkit.stats); the manifests' sha256 are listed at the end so
each number traces back. Plots go to --img (linked relative to --out).

    python bench/quality/summarize.py --study runs/study --out docs/results-tables.md --img docs/results
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_study import ARMS  # noqa: E402


def _ms(xs: list[float], fmt: str = "{:.2f}") -> str:
    import numpy as np

    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt.format(xs[0]) + " (n=1)"
    return f"{fmt.format(float(np.mean(xs)))} ± {fmt.format(float(np.std(xs, ddof=1)))}"


def load(study: Path) -> dict:
    from distillkit.artifacts import read_artifact

    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    traces: list[tuple[str, str]] = []
    for d in sorted((study / "train").glob("*-s*")):
        if d.name.endswith(".partial") or not (d / "manifest.json").is_file():
            continue
        arm, seed = d.name.rsplit("-s", 1)
        art = read_artifact(d, "train")
        held = art.table("heldout.arrow").to_pylist()
        metrics = art.table("metrics.arrow").to_pydict()
        mix = art.table("mixture.arrow").to_pydict() if (d / "mixture.arrow").is_file() else None
        runs[arm][int(seed)] = {"heldout": held, "figures": art.manifest.get("figures", {}), "metrics": metrics, "mixture": mix}
        traces.append((str(d), hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()[:16]))
    evals: dict[int, list[dict]] = {}
    limits: set = set()
    for d in sorted(study.glob("eval-s*")):
        if d.name.endswith(".partial") or not (d / "manifest.json").is_file():
            continue
        art = read_artifact(d, "eval")
        evals[int(d.name.split("-s")[1])] = art.table("results.arrow").to_pylist()
        limits.add(art.manifest["config"].get("limit"))
        traces.append((str(d), hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()[:16]))
    for name in ("score", "plan-flat", "plan-flat-logratio", "plan-pocl"):
        m = study / name / "manifest.json"
        if m.is_file():
            traces.append((str(study / name), hashlib.sha256(m.read_bytes()).hexdigest()[:16]))
    return {"runs": runs, "evals": evals, "eval_limits": sorted(limits, key=str), "traces": traces}


def _per_seed(runs: dict, arm: str, domain: str, key: str) -> list[float]:
    """`key` of `domain`'s held-out row in every seed's run of `arm`."""
    return [next(r[key] for r in run["heldout"] if r["domain"] == domain) for run in runs[arm].values()]


def _overall(held: list[dict], key: str) -> float:
    """Token-weighted over domains: exp(mean NLL) for perplexities, mean for KL."""
    import math

    tok = sum(r["tokens"] for r in held)
    if key.startswith("kl"):
        return sum(r[key] * r["tokens"] for r in held) / tok
    return math.exp(sum(math.log(r[key]) * r["tokens"] for r in held) / tok)


def _gap_closed_min(held: list[dict]) -> float:
    """The perplexity gap closed in the lagging domain, as `distillkit study` computes it (study_results.gap_closed:
    min over domains of (before − after) / (before − teacher), domains starting below MIN_RATIO × the teacher left out)."""
    from distillkit.study_results import gap_closed

    return gap_closed(held)["metrics"]["gap_closed_min"]


def _paired_table(runs: dict, arms: list[str], base: str = "b") -> list[str]:
    """Each arm against `base` on the same seeds: mean Δ [95 % CI], verdict, smallest detectable |Δ|."""
    from distillkit.stats import detectable, paired, verdict

    metrics = (("held-out ppl (overall)", lambda h: _overall(h, "student_ppl_after"), False, "{:+.2f}"),
               ("KL to teacher (overall)", lambda h: _overall(h, "kl_after"), False, "{:+.4f}"),
               ("ppl gap closed, lagging domain", _gap_closed_min, True, "{:+.4f}"))
    rows = [f"| arm vs {base} | metric | seeds | Δ mean [95 % CI] | verdict | detectable |", "|---|---|---:|---|---|---:|"]
    for a in arms:
        if a == base:
            continue
        for label, fn, higher, fmt in metrics:
            d = paired({s: fn(r["heldout"]) for s, r in runs[a].items()},
                       {s: fn(r["heldout"]) for s, r in runs[base].items()})
            if d is None:
                continue
            ci = "" if d.n < 2 else f" [{fmt.format(d.lo)}, {fmt.format(d.hi)}]"
            det = "–" if d.n < 2 else fmt.format(detectable(d)).lstrip("+")
            rows.append(f"| {a} | {label} | {d.n} | {fmt.format(d.mean)}{ci} | {verdict(d, higher)} | {det} |")
    return rows


def summarize(study: Path, out: Path, img: Path | None = None) -> str:
    import numpy as np

    data = load(study)
    runs, evals = data["runs"], data["evals"]
    record = json.loads((study / "study.json").read_text()) if (study / "study.json").is_file() else {}
    params = record.get("setting", record)  # run_study.py writes {"setting", "invocations"}
    arms = [a for a in ARMS if a in runs]
    lines: list[str] = []
    P = lines.append
    any_run = next(iter(runs[arms[0]].values())) if arms else None
    if any_run is None:
        raise SystemExit(f"no finished train runs under {study}/train")
    held0 = any_run["heldout"]
    domains = [r["domain"] for r in held0]
    tokens = params.get("steps", 0) * params.get("batch_size", 0) * params.get("seq_len", 0)

    P("## Overall (held-out, token-weighted over the 9 domains)\n")
    P(f"Before training: student perplexity {_overall(held0, 'student_ppl_before'):.1f}, KL(teacher‖student) "
      f"{_overall(held0, 'kl_before'):.3f} nats/token; teacher perplexity {_overall(held0, 'teacher_ppl'):.1f}.\n")
    P("| arm | what | seeds | student ppl after | KL to teacher after | domains where ppl < arm b's |")
    P("|---|---|---:|---:|---:|---:|")
    base_ppl = {}
    if "b" in runs:
        for d in domains:
            base_ppl[d] = np.mean(_per_seed(runs, "b", d, "student_ppl_after"))
    summary = {}
    for a in arms:
        ppl = [_overall(r["heldout"], "student_ppl_after") for r in runs[a].values()]
        kl = [_overall(r["heldout"], "kl_after") for r in runs[a].values()]
        summary[a] = (ppl, kl)
        wins = "–"
        if base_ppl and a != "b":
            mean_d = {d: np.mean(_per_seed(runs, a, d, "student_ppl_after")) for d in domains}
            wins = f"{sum(mean_d[d] < base_ppl[d] for d in domains)}/{len(domains)}"
        P(f"| {a} | {ARMS[a]['name']} | {len(ppl)} | {_ms(ppl, '{:.1f}')} | {_ms(kl, '{:.3f}')} | {wins} |")
    P("")
    if "b" in runs and len(arms) > 1:
        P("## Paired differences to arm b (same seed; 95 % t-CI over seeds; detectable: two-sided 5 %, power 0.8)\n")
        from distillkit.study_results import MIN_RATIO

        P("Lagging domain: the smallest (ppl_before − ppl_after) / (ppl_before − ppl_teacher) over the domains "
          f"that start at least {MIN_RATIO}× the teacher's perplexity.\n")
        lines.extend(_paired_table(runs, arms))
        P("")
    if "c" in runs and "g" in runs:
        P("The log-ratio factor against the paper's (arm g vs arm c, same seed):\n")
        lines.extend(_paired_table(runs, ["g"], base="c"))
        P("")

    P("## Held-out perplexity per domain after training (mean ± std over seeds)\n")
    P("| domain | tokens | teacher | pruned student | " + " | ".join(f"{a}: {ARMS[a]['name']}" for a in arms) + " |")
    P("|---|---:|---:|---:|" + "---:|" * len(arms))
    for d in domains:
        r0 = next(r for r in held0 if r["domain"] == d)
        cells = []
        for a in arms:
            cells.append(_ms(_per_seed(runs, a, d, "student_ppl_after"), "{:.1f}"))
        P(f"| {d} | {r0['tokens']} | {r0['teacher_ppl']:.1f} | {r0['student_ppl_before']:.1f} | " + " | ".join(cells) + " |")
    P("")

    P("## KL(teacher ‖ student) per domain after training, nats/token (mean ± std over seeds)\n")
    P("| domain | pruned student | " + " | ".join(a for a in arms) + " |")
    P("|---|---:|" + "---:|" * len(arms))
    for d in domains:
        r0 = next(r for r in held0 if r["domain"] == d)
        cells = [_ms(_per_seed(runs, a, d, "kl_after"), "{:.3f}") for a in arms]
        P(f"| {d} | {r0['kl_before']:.3f} | " + " | ".join(cells) + " |")
    P("")

    if evals:
        P(f"## lm-eval benchmarks (`limit` = {', '.join(map(str, data['eval_limits']))} documents per task; accuracy, mean ± std over seeds)\n")
        by: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for seed, rows in evals.items():
            for r in rows:
                by[(r["model"], r["task"], r["metric"])].append(r["value"])
        tasks = sorted({(t, m) for (_, t, m) in by if m in ("acc", "acc_norm")})
        models = [m for m in dict.fromkeys(mm for (mm, _, _) in by)]
        P("| model | " + " | ".join(f"{t} {m}" for t, m in tasks) + " |")
        P("|---|" + "---:|" * len(tasks))
        for m in models:
            label = f"{m}: {ARMS[m]['name']}" if m in ARMS else m
            P(f"| {label} | " + " | ".join(_ms([100 * v for v in by.get((m, t, k), [])], "{:.1f}") for t, k in tasks) + " |")
        P("")

    # plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import os

    img = img or out.parent / "results"
    img.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(img, out.parent)).as_posix()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, idx, title in ((axes[0], 0, "held-out perplexity after"), (axes[1], 1, "KL(teacher‖student) after")):
        means = [np.mean(summary[a][idx]) for a in arms]
        errs = [np.std(summary[a][idx], ddof=1) if len(summary[a][idx]) > 1 else 0 for a in arms]
        ax.bar([f"{a}\n{ARMS[a]['name']}" for a in arms], means, yerr=errs, capsize=4, color="tab:blue")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(img / "overall.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    for a in arms:
        run = runs[a][min(runs[a])]
        ax.plot(run["metrics"]["step"], run["metrics"]["ce_loss"], label=f"{a}: {ARMS[a]['name']}")
    ax.set_xlabel("step")
    ax.set_ylabel("train CE (nats/token)")
    ax.set_title(f"training CE, seed {min(runs[arms[0]])}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "train_ce.png", dpi=110)
    plt.close(fig)

    ddk = [a for a in ("c", "e", "f", "g") if a in runs and runs[a][min(runs[a])]["mixture"]]
    if ddk:
        fig, axes = plt.subplots(1, len(ddk), figsize=(4.5 * len(ddk), 3.6), squeeze=False)
        for ax, a in zip(axes[0], ddk):
            mix = runs[a][min(runs[a])]["mixture"]
            for d in domains:
                pts = [(s, w) for s, dd, w in zip(mix["step"], mix["domain"], mix["weight"]) if dd == d]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=d)
            ax.set_title(f"{a}: {ARMS[a]['name']}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("domain weight")
        axes[0][-1].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(img / "ddk_weights.png", dpi=110)
        plt.close(fig)

        P("## DDK domain weights (seed of the first run)\n")
        for a in ddk:
            mix = runs[a][min(runs[a])]["mixture"]
            steps = sorted(set(mix["step"]))
            P(f"Arm {a} ({ARMS[a]['name']}):\n")
            P("| step | " + " | ".join(domains) + " |")
            P("|---:|" + "---:|" * len(domains))
            for s in steps:
                w = {dd: ww for ss, dd, ww in zip(mix["step"], mix["domain"], mix["weight"]) if ss == s}
                P(f"| {s} | " + " | ".join(f"{w.get(d, float('nan')):.3f}" for d in domains) + " |")
            P("")

    P(f"Plots: [overall]({rel}/overall.png), [training CE]({rel}/train_ce.png)"
      + (f", [DDK weights]({rel}/ddk_weights.png)" if ddk else "") + ".\n")
    P("## Artifacts behind these numbers (sha256 of each manifest.json, first 16 hex)\n")
    P("| artifact | manifest sha256 |")
    P("|---|---|")
    for p, h in data["traces"]:
        P(f"| `{p}` | `{h}` |")
    P("")
    P(f"Study parameters (`{study}/study.json`): " + ", ".join(f"{k}={v}" for k, v in params.items())
      + (f"; token budget per arm: {tokens:,} tokens." if tokens else ""))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--out", default="docs/results-tables.md")
    ap.add_argument("--img", default=None, help="folder for the plots (default: results/ beside --out)")
    args = ap.parse_args()
    out = Path(args.out)
    text = summarize(Path(args.study), out, Path(args.img) if args.img else None)
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
