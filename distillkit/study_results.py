"""One study run's result file, read out of its train and eval artifacts.

The file is small (a few hundred KB at most: one ROUGE-L per held-out prompt) and self-contained, so it can be
committed and a report rebuilt from it without the run directory::

    metrics     rouge_l (mean over sampling seeds of the mean over prompts, 0..1), ppl (eval's held-out
                perplexity, token-weighted), kl (train's held-out KL(teacher‖student) after training)
    per_prompt  rouge_l: {sample_id: mean over sampling seeds}
    per_seed    rouge_l: {sampling seed: mean over prompts}
    domains     ppl: {domain: eval's held-out perplexity}; kl: {domain: train's KL after}
    train       wall_s, steps, tokens, tokens_per_s, first/final loss, stages, loss per stage, curve
    eval        wall_s, num_prompts, sampling settings

From train's heldout.arrow (per domain: the teacher's perplexity from the scores, the student's before and
after training, KL(teacher‖student) before and after, all on the same held-out documents), `gap_closed` adds
(keys absent in result files written before it; every reader treats them as optional)::

    metrics     gap_closed_mean / _sd / _min: over domains, of (ppl_before − ppl_after) / (ppl_before − ppl_teacher)
                kl_closed_mean / _sd / _min:  over domains, of (kl_before − kl_after) / kl_before
                ratio_max: the largest per-domain ppl_after / ppl_teacher
    domains     teacher_ppl, train_ppl_before, kl_before, ratio_before, ratio_after, gap_closed, kl_closed
    gap         min_ratio, excluded (domains without a gap to close), lagging (the argmin domain of each)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from distillkit.records import EvalRecord, TrainRecord


def _rows(art, name: str) -> list[dict[str, Any]]:
    return art.table(name).to_pylist() if (art.path / name).is_file() else []


def _eval_part(art, label: str) -> dict[str, Any]:
    """`label`'s results in the eval artifact `art` (read once by the caller, however many labels it holds)."""
    out: dict[str, Any] = {"metrics": {}, "per_prompt": {}, "per_seed": {}, "domains": {}}
    gen = [g for g in _rows(art, "generation.arrow") if g["model"] == label]
    if gen:
        by_prompt: dict[str, list[float]] = {}
        by_seed: dict[int, list[float]] = {}
        for g in gen:
            by_prompt.setdefault(g["sample_id"], []).append(float(g["rouge_l"]))
            by_seed.setdefault(int(g["seed"]), []).append(float(g["rouge_l"]))
        per_seed = {s: math.fsum(v) / len(v) for s, v in sorted(by_seed.items())}
        out["metrics"]["rouge_l"] = math.fsum(per_seed.values()) / len(per_seed)
        out["per_seed"]["rouge_l"] = {str(s): v for s, v in per_seed.items()}
        out["per_prompt"]["rouge_l"] = {p: math.fsum(v) / len(v) for p, v in sorted(by_prompt.items())}
    for r in _rows(art, "results.arrow"):
        if r["model"] != label:
            continue
        if r["task"] == "heldout_ppl" and r["metric"] == "ppl":
            out["metrics"]["ppl"] = r["value"]
        elif r["task"] == "heldout_generation" and r["metric"] in ("exact_match", "eos_rate", "answer_tokens"):
            out["metrics"][r["metric"]] = r["value"]  # beside ROUGE-L: exact match, the share stopped at EOS, length
        elif r["task"] not in ("heldout_ppl", "heldout_generation"):
            out["metrics"][f"{r['task']}/{r['metric']}"] = r["value"]
    dom = {d["domain"]: d["ppl"] for d in _rows(art, "domains.arrow") if d["model"] == label}
    if dom:
        out["domains"]["ppl"] = dom
    meta = EvalRecord.from_manifest(art.manifest.get("eval", {}), f"{art.path}/manifest.json")
    out["eval"] = {"wall_s": art.manifest.get("figures", {}).get("wall_s"), "num_prompts": len(out["per_prompt"].get("rouge_l", {})),
                   "generation": meta.generation, "tasks": list(meta.tasks)}
    return out


# A domain whose starting perplexity is within 5 % of the teacher's has no gap worth closing: the share closed
# would divide by a difference of the size of the measurement noise (a few held-out documents per domain).
MIN_RATIO = 1.05


def _spread(xs: list[float]) -> tuple[float, float, float]:
    """Mean, standard deviation across the values (ddof 0: the domains are all there are, not a sample), min."""
    m = math.fsum(xs) / len(xs)
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs)), min(xs)


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def gap_closed(held: list[dict[str, Any]], min_ratio: float = MIN_RATIO) -> dict[str, Any]:
    """The share of each domain's starting gap to the teacher that training closed, and its summary over domains.

    `held` are train's heldout.arrow rows (domain, teacher_ppl, student_ppl_before, student_ppl_after and, when a
    teacher was at hand, kl_before, kl_after), all measured on the same held-out documents. Per domain d:

    - ppl: ``(ppl_before − ppl_after) / (ppl_before − ppl_teacher)``: 1 = the student reached the teacher's
      perplexity, 0 = no change, < 0 = worse, > 1 = past the teacher. Defined where the starting ratio
      ``ppl_before / ppl_teacher`` is at least `min_ratio`; other domains are listed in ``excluded``.
    - kl: ``(kl_before − kl_after) / kl_before`` (KL(teacher‖student) per target token), defined where kl_before > 0.

    Over the domains where each is defined: the mean, and with two or more domains the spread (standard deviation
    across domains, ddof 0) and the minimum (the lagging domain, named in ``lagging``); and ``ratio_max``, the
    largest ppl_after / ppl_teacher.
    """
    domains: dict[str, dict[str, float]] = {k: {} for k in ("teacher_ppl", "train_ppl_before", "ratio_before", "ratio_after",
                                                            "gap_closed", "kl_before", "kl_closed")}
    excluded = []
    for r in held:
        d, t, b, a = r["domain"], r.get("teacher_ppl"), r.get("student_ppl_before"), r.get("student_ppl_after")
        if not (_finite(t, b, a) and t > 0):
            excluded.append(d)
            continue
        domains["teacher_ppl"][d], domains["train_ppl_before"][d] = t, b
        domains["ratio_before"][d], domains["ratio_after"][d] = b / t, a / t
        if b / t >= min_ratio:
            domains["gap_closed"][d] = (b - a) / (b - t)
        else:
            excluded.append(d)
        kb, ka = r.get("kl_before"), r.get("kl_after")
        if _finite(kb, ka):
            domains["kl_before"][d] = kb
            if kb > 0:
                domains["kl_closed"][d] = (kb - ka) / kb
    metrics: dict[str, float] = {}
    lagging: dict[str, str] = {}
    for key in ("gap_closed", "kl_closed"):
        per = domains[key]
        if per:
            mean, sd, low = _spread(list(per.values()))
            metrics[f"{key}_mean"] = mean
            if len(per) >= 2:  # a spread and a lagging domain need domains to compare
                metrics[f"{key}_sd"], metrics[f"{key}_min"] = sd, low
                lagging[key] = min(per, key=lambda k: (per[k], k))
    if domains["ratio_after"]:
        metrics["ratio_max"] = max(domains["ratio_after"].values())
    return {"metrics": metrics, "domains": {k: v for k, v in domains.items() if v},
            "min_ratio": min_ratio, "excluded": excluded, "lagging": lagging}


def collect_run(tr, er, label: str) -> dict[str, Any]:
    """The result of one (arm, seed) run from its train and eval StageResults."""
    from distillkit.artifacts import read_artifact

    out = _eval_part(read_artifact(er.path, "eval"), label)
    art = read_artifact(tr.path, "train")
    figs = art.manifest.get("figures", {})
    held = _rows(art, "heldout.arrow")
    if held and "kl_after" in held[0]:
        tok = sum(r["tokens"] for r in held)
        out["metrics"]["kl"] = math.fsum(r["kl_after"] * r["tokens"] for r in held) / tok if tok else None
        out["domains"]["kl"] = {r["domain"]: r["kl_after"] for r in held}
        out["domains"]["train_ppl_after"] = {r["domain"]: r["student_ppl_after"] for r in held}
    if held:
        gap = gap_closed(held)
        out["metrics"].update(gap.pop("metrics"))
        out["domains"].update(gap.pop("domains"))
        out["gap"] = gap
    metrics = _rows(art, "metrics.arrow")
    by_stage: dict[int, list[float]] = {}
    for m in metrics:
        by_stage.setdefault(int(m["stage"]), []).append(float(m["loss"]))
    every = max(1, len(metrics) // 200)
    out["train"] = {
        "wall_s": figs.get("wall_s"), "steps": figs.get("steps"), "tokens_per_s": figs.get("tokens_per_s"),
        "tokens": int(sum(m["tokens"] for m in metrics)), "first_loss": figs.get("first_loss"), "final_loss": figs.get("final_loss"),
        "resumed_from_step": figs.get("resumed_from_step"),
        "stages": [dataclasses.asdict(st) for st in TrainRecord.from_manifest(art.manifest.get("train", {}), f"{art.path}/manifest.json").stages],
        "loss_by_stage": {str(s): math.fsum(v) / len(v) for s, v in sorted(by_stage.items())},
        "curve": [[int(m["step"]), round(float(m["loss"]), 5), int(m["stage"])] for m in metrics[::every]],
    }
    return out


def collect_reference(er) -> dict[str, Any]:
    """The teacher's and the initial student's results, keyed by their eval labels."""
    from distillkit.artifacts import read_artifact

    art = read_artifact(er.path, "eval")
    models = {m.label: m.role for m in EvalRecord.from_manifest(art.manifest.get("eval", {}), f"{art.path}/manifest.json").models}
    return {"models": {label: {"role": role, **_eval_part(art, label)} for label, role in models.items()},
            "eval": {"wall_s": art.manifest.get("figures", {}).get("wall_s")}}


__all__ = ["collect_run", "collect_reference", "gap_closed", "MIN_RATIO"]
