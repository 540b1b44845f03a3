"""`distillkit plan`: a score artifact -> POCL curriculum + DDK domain mixture.

Reads ``samples.arrow`` and ``domains.arrow`` of a complete, unsharded score artifact and writes

- ``curriculum.arrow``: the *training* rows (validation rows stay held out for DDK re-measurement
  and eval), sorted by rank: sample_id, domain, rank (0 = easiest), stage (first stage whose pool
  holds the row), difficulty (the measure, higher = harder), num_tokens;
- ``mixture.arrow``: per domain the initial weight (sums to 1) beside the measured perplexities;
- ``plan.png`` with ``plot``;
- the schedule (per stage: fraction, temperature, KD weight λ, pool size) under ``plan`` in the manifest.

Identical scores and config give byte-identical ``.arrow`` files. See docs/plan.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from distillkit.config import identity, opt, to_dict
from distillkit.pipelines.stage import StageResult, result
from distillkit.choices import DDK_ALPHA, DDK_FACTOR, DDK_INTERVAL, DDK_TAU, DdkFactor, Measure, MixtureKind

if TYPE_CHECKING:
    import numpy as np

KIND = "plan"


def _ddk_factor_counts(c: "PlanConfig") -> bool:
    """The factor and its τ count only away from the paper's factor, so plans made before the keys stay complete."""
    return (c.ddk_factor, c.ddk_tau) != (DDK_FACTOR, DDK_TAU)


@dataclass(frozen=True)
class PlanConfig:
    scores: str = opt(None, "Score artifact directory (written by `distillkit score`).", panel="inputs")
    out: str = opt(None, "Output artifact directory.", panel="output", identity=False)
    measure: Measure = opt("auto", "Difficulty measure: rrf (ROUGE-L + student CE, POCL), student_ce, ppl_ratio, nll_gap; auto = rrf when the scores have ROUGE-L, else student_ce.", panel="curriculum")
    stages: int = opt(4, "Number of curriculum stages S; stage s trains on the easiest (s+1)/S of every domain.", panel="curriculum")
    curriculum: bool = opt(True, "false: one stage with all training data (the no-curriculum ablation).", panel="curriculum")
    pools: Literal["growing", "full"] = opt("growing", "growing: stage s trains on the easiest (s+1)/S (POCL); full: every stage trains on all training data in no order -- the stage schedule (T, λ, optimizer restarts) without the curriculum, an ablation.", panel="curriculum", identity="non-default")
    stage_length: float | None = opt(None, "Training length of each stage, in stage_unit (default: 1 epoch; required for steps).", panel="curriculum")
    stage_unit: Literal["epochs", "steps"] = opt("epochs", "Unit of stage_length: epochs over the stage's pool, or optimizer steps.", panel="curriculum")
    restart_optimizer: bool = opt(False, "Restart optimizer and LR schedule at each stage (POCL's reference code does).", panel="curriculum")
    temperature_start: float = opt(1.0, "Distillation temperature of the first stage.", panel="schedule")
    temperature_end: float = opt(2.0, "Distillation temperature of the last stage (linear in between).", panel="schedule")
    kd_weight_start: float = opt(0.7, "KD weight λ of the first stage: loss = (1-λ)·CE + λ·KD.", panel="schedule")
    kd_weight_end: float = opt(1.0, "KD weight λ of the last stage (linear in between).", panel="schedule")
    mixture: MixtureKind = opt("ddk", "Domain mixture: ddk (DDK's discrepancy factor of the student/teacher perplexity ratio, see ddk_factor), uniform, proportional (by training tokens).", panel="mixture")
    ddk_factor: DdkFactor = opt(DDK_FACTOR, "DDK factor: ratio = the paper's Eq. 1/2, softmax(ppl_S/ppl_T); log-ratio = weights ∝ (ppl_S/ppl_T)^(1/τ), bounded for large gaps (freshly pruned students). Used for the initial weights and train's re-weighting.", panel="mixture", identity=_ddk_factor_counts)
    ddk_tau: float = opt(DDK_TAU, "Temperature τ > 0 of the log-ratio factor (1: weights ∝ the ratio; larger is flatter). Only with ddk_factor = log-ratio.", panel="mixture", identity=_ddk_factor_counts)
    ddk_alpha: float = opt(DDK_ALPHA, "DDK Eq. 2 smoothing α, for train's re-weighting.", panel="mixture")
    ddk_interval: int = opt(DDK_INTERVAL, "DDK re-measurement interval K in steps, for train.", panel="mixture")
    ddk_smoothing: bool = opt(True, "DDK factor smoothing (Eq. 2); false re-applies Eq. 1 at each interval.", panel="mixture")
    rrf_k: int = opt(60, "Reciprocal rank fusion constant k of the rrf measure.", panel="curriculum")
    plot: bool = opt(False, "Also write plan.png: difficulty by domain with stage cuts, and the mixture.", panel="output")

    def validate(self) -> list[str]:
        problems = []
        for name in ("scores", "out"):
            if not getattr(self, name):
                problems.append(f"{name} is required (--{name})")
        if self.stages < 1:
            problems.append(f"stages must be >= 1, got {self.stages} (use curriculum = false for one stage with all data)")
        if self.stage_length is not None and not self.stage_length > 0:
            problems.append(f"stage_length must be > 0, got {self.stage_length}")
        if self.stage_unit == "steps":
            if self.stage_length is None:
                problems.append("stage_length is required with stage_unit = 'steps' (e.g. --stage-length 1000)")
            elif not float(self.stage_length).is_integer():
                problems.append(f"stage_length in steps must be a whole number, got {self.stage_length}")
        for name in ("temperature_start", "temperature_end"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("kd_weight_start", "kd_weight_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ddk_alpha <= 1.0:
            problems.append(f"ddk_alpha must be in [0, 1], got {self.ddk_alpha}")
        if math.isfinite(self.ddk_tau) and not self.ddk_tau > 0:  # non-finite values are refused by the config checks
            problems.append(f"ddk_tau must be > 0, got {self.ddk_tau} (1 = weights proportional to the perplexity ratio)")
        elif self.ddk_factor == "ratio" and self.ddk_tau != DDK_TAU:
            problems.append(f"ddk_tau = {self.ddk_tau} applies only to ddk_factor = 'log-ratio' (the paper's ratio factor has "
                            "no temperature): add --ddk-factor log-ratio or leave ddk_tau at 1")
        if self.ddk_interval < 1:
            problems.append(f"ddk_interval must be >= 1 step, got {self.ddk_interval}")
        if self.rrf_k < 1:
            problems.append(f"rrf_k must be >= 1, got {self.rrf_k}")
        if self.scores and self.out and Path(self.scores).resolve() == Path(self.out).resolve():
            problems.append("--out must differ from --scores (the plan would replace the score artifact)")
        return problems

    @property
    def num_stages(self) -> int:
        return self.stages if self.curriculum else 1

    def stage_length_entry(self) -> dict[str, Any]:
        if self.stage_unit == "steps":
            return {"unit": "steps", "value": int(self.stage_length)}  # type: ignore[arg-type]
        return {"unit": "epochs", "value": 1.0 if self.stage_length is None else float(self.stage_length)}


# Eq. 1 weighs domains by exp(ratio): with ratios spread by more than this (its largest/smallest weight above
# exp(2) ≈ 7.4; the paper's 1.2–1.8 give 1.8) the plan says so and names the bounded factor.
EQ1_SPREAD_NOTE = 2.0


def _note_eq1_concentration(cfg: PlanConfig, names: list[str], ratio: np.ndarray, weights: np.ndarray) -> None:
    import numpy as np

    if cfg.mixture != "ddk" or cfg.ddk_factor != "ratio" or len(names) < 2 or not np.all(np.isfinite(ratio)):
        return
    if float(ratio.max() - ratio.min()) <= EQ1_SPREAD_NOTE:
        return
    from distillkit.progress import console

    top = int(np.argmax(weights))
    console.print(f"[yellow]note[/]: DDK's Eq. 1 puts {weights[top]:.2f} of the sampling on {names[top]} (ppl ratios "
                  f"{ratio.min():.2f}–{ratio.max():.2f}; the paper's are ≈ 1.2–1.8). --ddk-factor log-ratio bounds it "
                  "(a freshly pruned student: docs/results.md §3b)", soft_wrap=True)


def run(cfg: PlanConfig, resume: bool = False, overwrite: bool = False) -> StageResult:
    from distillkit import curriculum as cur
    from distillkit.artifacts import ArtifactWriter

    t0 = time.time()
    # 1. Everything that can be wrong with the input is checked before --out is touched.
    scores, train, measure, domains, validation = _read_scores(cfg)
    # 2. The curriculum over the training rows (easy -> hard, S cumulative stages; or every stage on all of them).
    curric = cur.build_curriculum(train, measure, cfg.num_stages, cfg.rrf_k)
    if cfg.pools == "full":  # the schedule without the curriculum: every sample in the first pool
        curric = cur.full_pools(curric, cfg.num_stages)
    # 3. The domain mixture beside the measured perplexities, and the record of the schedule.
    mixture, no_train = _mixture_table(cfg, curric, domains, validation, scores.path)
    record = _plan_record(cfg, curric, measure, scores, validation, no_train)
    # 4. The artifact.
    ident = identity(cfg)  # each option says whether it counts (opt(identity=...))
    ident["scores_manifest_sha256"] = scores.sha256
    writer = ArtifactWriter(cfg.out, KIND, ident, inputs=[scores], resume=resume, overwrite=overwrite)
    if writer.done:
        return result(writer)
    writer.write("curriculum.arrow", curric.table)
    writer.write("mixture.arrow", mixture)
    if cfg.plot:
        plot_plan(curric.table, mixture, record, writer.path("plan.png"))
    figures = {"train_samples": curric.table.num_rows, "validation_samples": int(sum(validation.values())),
               "domains": len(curric.domains), "wall_s": round(time.time() - t0, 2)}
    writer.finish(figures, extra={"plan": record.to_manifest()})
    return result(writer)


def _read_scores(cfg: PlanConfig):
    """(the score artifact, its training rows with the measure's columns, the measure, its domain table, held-out rows
    per domain), refusing a shard, missing columns or no training rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from distillkit import curriculum as cur
    from distillkit.artifacts import check_columns, read_artifact
    from distillkit.errors import ArtifactError
    from distillkit.records import ScoreRecord
    from distillkit.schemas import DOMAIN_COLUMNS, PLAN_SAMPLE_COLUMNS

    scores = read_artifact(cfg.scores, "score")
    shard = ScoreRecord.from_manifest(scores.manifest, f"{scores.path}/manifest.json").shard
    if shard[1] > 1:
        raise ArtifactError(f"{scores.path} is shard {shard[0]}/{shard[1]} of a score run; join the shards first "
                            "with `distillkit score --merge SHARD ... --out DIR` and plan from that")
    samples = scores.table("samples.arrow")
    measure = cur.resolve_measure(cfg.measure, samples.column_names)
    needed = dict(PLAN_SAMPLE_COLUMNS)
    needed.update({c: pa.float32() for c in cur.MEASURE_COLUMNS[measure]})
    check_columns(samples, needed, str(scores.path / "samples.arrow"))
    domains = scores.table("domains.arrow", DOMAIN_COLUMNS)
    is_train = pc.equal(samples.column("split"), "train")
    train = samples.filter(is_train).select(list(needed))
    held = samples.filter(pc.invert(is_train)).column("domain")  # test and dev rows
    validation = {str(v["values"]): int(v["counts"]) for v in pc.value_counts(held).to_pylist()} if len(held) else {}
    if train.num_rows == 0:
        raise ArtifactError(f"{scores.path}/samples.arrow has no rows with split = 'train' (only {samples.num_rows} held-out rows); "
                            "rescore with more data per domain")
    return scores, train, measure, domains, validation


def _mixture_table(cfg: PlanConfig, curric, domains, validation: dict[str, int], scores_path):
    """(mixture.arrow: per domain with training rows its weight and the scored perplexities, the domains without
    training rows)."""
    import numpy as np
    import pyarrow as pa

    from distillkit.errors import ArtifactError
    from distillkit.mixture import mixture_weights

    names = curric.domains
    dom_rows = {r["domain"]: r for r in domains.to_pylist()}
    missing = [d for d in names if d not in dom_rows]
    if missing:
        raise ArtifactError(f"{scores_path}/domains.arrow lacks domain(s) {', '.join(missing)} that samples.arrow has; "
                            "the score artifact is inconsistent: rescore with --overwrite")
    no_train = sorted(d for d in dom_rows if d not in set(names))
    t_ppl = np.array([dom_rows[d]["teacher_ppl"] for d in names], dtype=np.float64)
    s_ppl = np.array([dom_rows[d]["student_ppl"] for d in names], dtype=np.float64)
    train_tokens = _tokens_by_domain(curric.table, names)
    weights = mixture_weights(cfg.mixture, s_ppl, t_ppl, train_tokens, cfg.ddk_factor, cfg.ddk_tau)
    ratio = s_ppl / t_ppl
    _note_eq1_concentration(cfg, names, ratio, weights)
    table = pa.table(
        {
            "domain": pa.array(names, pa.string()),
            "weight": pa.array(weights, pa.float64()),
            "teacher_ppl": pa.array(t_ppl, pa.float64()),
            "student_ppl": pa.array(s_ppl, pa.float64()),
            "ppl_ratio": pa.array(ratio, pa.float64()),
            "num_samples": pa.array(curric.pools[-1], pa.int64()),
            "num_tokens": pa.array(train_tokens, pa.int64()),
            "num_validation": pa.array([validation.get(d, 0) for d in names], pa.int64()),
            "heldout": pa.array([bool(dom_rows[d].get("heldout", True)) for d in names], pa.bool_()),
        }
    )
    return table, no_train


def _plan_record(cfg: PlanConfig, curric, measure: str, scores, validation: dict[str, int], no_train: list[str]):
    """The manifest's ``plan`` table: the stages (pool, T, λ), their length, the mixture settings, the inputs."""
    from distillkit import curriculum as cur
    from distillkit.records import MixtureSettings, PlannedStage, PlanRecord, StageLength

    names, stages = curric.domains, []
    for sch in cur.schedule(cfg.num_stages, cfg.temperature_start, cfg.temperature_end, cfg.kd_weight_start, cfg.kd_weight_end):
        pool = curric.pools[sch.stage]
        prev = int(curric.pools[sch.stage - 1].sum()) if sch.stage else 0
        stages.append(PlannedStage(stage=sch.stage, fraction=sch.fraction, temperature=sch.temperature, kd_weight=sch.kd_weight,
                                   num_samples=int(pool.sum()), num_new=int(pool.sum()) - prev,
                                   num_tokens=int(curric.pool_tokens[sch.stage]),
                                   domains={d: int(c) for d, c in zip(names, pool)}))
    return PlanRecord(
        measure=measure,
        measure_help=cur.MEASURE_HELP[measure],
        num_stages=cfg.num_stages,
        curriculum=cfg.curriculum,
        stratified="per domain: stage s holds the easiest ceil((s+1)*n_d/S) training samples of every domain d",
        stage_length=StageLength(**cfg.stage_length_entry()),
        restart_optimizer=cfg.restart_optimizer,
        stages=tuple(stages),
        mixture=MixtureSettings(kind=cfg.mixture, alpha=cfg.ddk_alpha, interval=cfg.ddk_interval, smoothing=cfg.ddk_smoothing,
                                factor=cfg.ddk_factor, tau=cfg.ddk_tau),
        scores=str(scores.path),
        scores_manifest_sha256=scores.sha256,
        train_samples=curric.table.num_rows,
        validation_samples={d: validation.get(d, 0) for d in sorted(set(validation) | set(names))},
        domains_without_train=tuple(no_train),
        rrf_k=cfg.rrf_k if measure == "rrf" else None,
    )


def _tokens_by_domain(table, names: list[str]) -> "np.ndarray":
    import numpy as np

    from distillkit.curriculum import domain_codes

    _, codes = domain_codes(table.column("domain"))
    return np.bincount(codes, weights=table.column("num_tokens").to_numpy().astype(np.float64), minlength=len(names)).astype(np.int64)


def plot_plan(curriculum, mixture, record, path: Path) -> None:
    """Difficulty distribution by domain with the range each stage adds, beside the mixture."""
    import numpy as np
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distillkit.curriculum import domain_codes

    names, codes = domain_codes(curriculum.column("domain"))
    x = curriculum.column("difficulty").to_numpy().astype(np.float64)
    stage = curriculum.column("stage").to_numpy().astype(np.int64)
    measure, num_stages, n = record.measure, record.num_stages, len(x)
    xlabel = f"difficulty: {measure} (higher = harder)"
    if measure == "rrf":  # RRF values crowd near 1 on large sets; its ranks are what the curriculum uses
        pct = np.empty(n)
        pct[np.argsort(x, kind="stable")] = (np.arange(n) + 0.5) * 100.0 / n
        x, xlabel = pct, "RRF difficulty: percentile among training samples (higher = harder)"
    ok = np.isfinite(x)
    x, codes, stage = x[ok], codes[ok], stage[ok]
    # one sort gives every domain's values and each (domain, stage) group's range
    order = np.lexsort((x, stage, codes))
    xs, key = x[order], (codes * num_stages + stage)[order]
    bounds = np.flatnonzero(np.diff(key)) + 1
    starts, ends = np.concatenate(([0], bounds)), np.concatenate((bounds, [len(key)])) - 1
    per = [x[codes == i] for i in range(len(names))]

    h = max(3.2, 0.5 * len(names) + 1.8)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, h), gridspec_kw={"width_ratios": [3, 2]}, layout="constrained")
    y = np.arange(len(names))
    horizontal = {"orientation": "horizontal"} if _mpl_at_least(matplotlib.__version__, 3, 10) else {"vert": False}
    ax1.boxplot(per, positions=y - 0.12, widths=0.4, showfliers=False, whis=(5, 95), medianprops={"color": "black"},
                patch_artist=True, boxprops={"facecolor": "#cfe2f3"}, **horizontal)
    colors = plt.cm.viridis(np.linspace(0.05, 0.9, num_stages))
    for st, en in zip(starts, ends):
        k = int(key[st])
        d, s = divmod(k, num_stages)
        if xs[en] > xs[st]:
            ax1.hlines(d + 0.25, xs[st], xs[en], colors=[colors[s]], lw=5)
        else:  # one sample (or equal values): a zero-length bar would not show
            ax1.scatter([xs[st]], [d + 0.25], color=[colors[s]], marker="s", s=22, zorder=3)
    handles = [plt.Line2D([], [], color=colors[s], lw=5) for s in range(num_stages)]
    labels = [f"stage {s} adds" if num_stages > 1 else "the one stage" for s in range(num_stages)]
    ax1.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14 if len(names) > 3 else -0.25),
               ncol=min(num_stages, 6), fontsize=8, frameon=False)
    ax1.set_yticks(y, names)
    ax1.set_ylim(len(names) - 0.5, -0.6)
    if measure == "ppl_ratio" and len(x) and x.min() > 0:
        ax1.set_xscale("log")
    elif len(x) and measure != "rrf":
        lo, hi = np.percentile(x, [0.5, 99.5])
        pad = 0.03 * (hi - lo or 1.0)
        ax1.set_xlim(lo - pad, hi + pad)
    ax1.set_xlabel(xlabel)
    ax1.set_title(f"{len(x):,} training samples by domain: box 25-75%, whiskers 5-95%;\n"
                  f"bars: difficulty range each of {num_stages} stage(s) adds (pools are cumulative)", fontsize=10)
    ax1.grid(axis="x", alpha=0.3)

    w = mixture.column("weight").to_numpy()
    ratio = mixture.column("ppl_ratio").to_numpy()
    ax2.barh(y, w, color="#e69138", height=0.6)
    ax2.axvline(1.0 / len(names), color="gray", ls="--", lw=1, label="uniform")
    for i in range(len(names)):
        ax2.text(w[i], i, f" {w[i]:.3f}  (ppl S/T {ratio[i]:.2f})", va="center", fontsize=8)
    ax2.set_yticks(y, names)
    ax2.set_ylim(len(names) - 0.5, -0.6)
    ax2.set_xlim(0, max(w.max() * 1.8, 1.5 / len(names)))
    ax2.set_xlabel("sampling weight (sums to 1)")
    ax2.set_title(f"domain mixture: {mixture_formula(record.mixture)}\nheld-out perplexity ratio in brackets", fontsize=10)
    ax2.legend(loc="lower right", fontsize=8)
    # no software/date metadata: the same plan gives the same bytes
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def mixture_formula(mix) -> str:
    """The mixture's name with the formula of its weights, e.g. for the plan's figure."""
    if mix.kind != "ddk":
        return mix.kind
    if mix.factor == "log-ratio":
        return f"ddk ∝ (ppl_S / ppl_T)^(1/τ), τ = {mix.tau:g}"
    return "ddk = softmax(ppl_S / ppl_T)"


def _mpl_at_least(version: str, major: int, minor: int) -> bool:
    parts = [int(x) for x in version.split(".")[:2] if x.isdigit()]
    return tuple(parts) >= (major, minor)


__all__ = ["PlanConfig", "run", "plot_plan", "mixture_formula", "KIND"]
