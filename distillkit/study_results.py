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
"""

from __future__ import annotations

import math
from typing import Any


def _rows(art, name: str) -> list[dict[str, Any]]:
    return art.table(name).to_pylist() if (art.path / name).is_file() else []


def _eval_part(er, label: str) -> dict[str, Any]:
    from distillkit.artifacts import read_artifact

    art = read_artifact(er.path, "eval")
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
        elif r["task"] not in ("heldout_ppl", "heldout_generation"):
            out["metrics"][f"{r['task']}/{r['metric']}"] = r["value"]
    dom = {d["domain"]: d["ppl"] for d in _rows(art, "domains.arrow") if d["model"] == label}
    if dom:
        out["domains"]["ppl"] = dom
    meta = art.manifest.get("eval", {})
    out["eval"] = {"wall_s": art.manifest.get("figures", {}).get("wall_s"), "num_prompts": len(out["per_prompt"].get("rouge_l", {})),
                   "generation": meta.get("generation"), "tasks": meta.get("tasks")}
    return out


def collect_run(tr, er, label: str) -> dict[str, Any]:
    """The result of one (arm, seed) run from its train and eval StageResults."""
    from distillkit.artifacts import read_artifact

    out = _eval_part(er, label)
    art = read_artifact(tr.path, "train")
    figs = art.manifest.get("figures", {})
    held = _rows(art, "heldout.arrow")
    if held and "kl_after" in held[0]:
        tok = sum(r["tokens"] for r in held)
        out["metrics"]["kl"] = math.fsum(r["kl_after"] * r["tokens"] for r in held) / tok if tok else None
        out["domains"]["kl"] = {r["domain"]: r["kl_after"] for r in held}
        out["domains"]["train_ppl_after"] = {r["domain"]: r["student_ppl_after"] for r in held}
    metrics = _rows(art, "metrics.arrow")
    by_stage: dict[int, list[float]] = {}
    for m in metrics:
        by_stage.setdefault(int(m["stage"]), []).append(float(m["loss"]))
    every = max(1, len(metrics) // 200)
    out["train"] = {
        "wall_s": figs.get("wall_s"), "steps": figs.get("steps"), "tokens_per_s": figs.get("tokens_per_s"),
        "tokens": int(sum(m["tokens"] for m in metrics)), "first_loss": figs.get("first_loss"), "final_loss": figs.get("final_loss"),
        "resumed_from_step": figs.get("resumed_from_step"),
        "stages": art.manifest.get("train", {}).get("stages"),
        "loss_by_stage": {str(s): math.fsum(v) / len(v) for s, v in sorted(by_stage.items())},
        "curve": [[int(m["step"]), round(float(m["loss"]), 5), int(m["stage"])] for m in metrics[::every]],
    }
    return out


def collect_reference(er) -> dict[str, Any]:
    """The teacher's and the initial student's results, keyed by their eval labels."""
    from distillkit.artifacts import read_artifact

    art = read_artifact(er.path, "eval")
    models = {m["label"]: m["role"] for m in art.manifest.get("eval", {}).get("models", [])}
    return {"models": {label: {"role": role, **_eval_part(er, label)} for label, role in models.items()},
            "eval": {"wall_s": art.manifest.get("figures", {}).get("wall_s")}}


__all__ = ["collect_run", "collect_reference"]
