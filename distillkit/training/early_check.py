"""The early held-out check: after the first `early_check` optimizer steps, is the student worse than before?

A freshly pruned student's held-out KL to the teacher falls fast from the first step; a student that is
already trained sits near its optimum, and a learning rate meant for healing (1e-4) makes its held-out KL
*rise* (docs/train.md, "Starting from a trained student"). So train re-measures the held-out slice of the
"before" report once, after step N, on the dev rows (a decision: it never reads the test slice the report
reads, unless the scores have no dev split), and compares: KL(teacher‖student) per
token when there is a teacher to measure against, else the student's NLL. A rise of more than
`TOLERANCE` (relative) overall, or in most domains, is a warning line naming the fix, and a record in the
manifest's figures; training goes on (or stops, with ``early_check_stop``).

The check only reads: the forwards run under ``no_grad`` in eval mode (`measure_heldout`), inside
`torch.random.fork_rng`, and neither the sampler nor the optimizer is touched, so a run's weights are
bitwise the same with and without it (tested).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from distillkit.errors import DistillkitError

if TYPE_CHECKING:
    from distillkit.training.components import Components, Settings
    from distillkit.training.state import TrainState

# A relative rise above this is a rise: 0.2 %. Measured on a tiny trained student over its first 10 steps: at lr 1e-5
# its held-out KL moves by < 0.05 %, at 1e-4 it rises 0.5 %, at 1e-3 7 %.
TOLERANCE = 0.002


class EarlyCheckStop(DistillkitError):
    """The early held-out check found a rise and ``early_check_stop`` is set; the checkpoint is kept. Exit 1."""


def compare(before: dict[str, Any], now: dict[str, Any], domains: list[str], steps: int) -> dict[str, Any]:
    """Held-out report `now` against `before` (both `heldout_report` dicts): the record the manifest keeps."""
    use_kl = before.get("kl") is not None and now.get("kl") is not None
    if use_kl:
        b, a, ob, oa = before["kl"], now["kl"], before["overall_kl"], now["overall_kl"]
    else:  # the student's mean NLL per token, log of its perplexity
        b, a = [math.log(x) for x in before["student_ppl"]], [math.log(x) for x in now["student_ppl"]]
        ob, oa = math.log(before["overall_student_ppl"]), math.log(now["overall_student_ppl"])
    def up(x: float, y: float) -> bool:
        return y > x * (1 + TOLERANCE) + 1e-6  # + 1e-6 nats: a KL of 0 (the teacher itself) moving by rounding is no rise

    rose = [d for d, x, y in zip(domains, b, a) if up(x, y)]
    return {"step": int(steps), "metric": "kl" if use_kl else "nll", "before": float(ob), "after": float(oa),
            "rose": bool(up(ob, oa) or len(rose) > len(domains) / 2), "domains_rose": rose,
            "tolerance": TOLERANCE, "domains": {d: {"before": float(x), "after": float(y)} for d, x, y in zip(domains, b, a)}}


def message(record: dict[str, Any], lr: float) -> str:
    """The one warning line of a rise: what rose, by how much, and what to change."""
    from distillkit.training.setup import TRAINED_LR

    what = "KL to the teacher" if record["metric"] == "kl" else "student NLL"
    n, k = len(record["domains"]), len(record["domains_rose"])
    lower = f"{min(TRAINED_LR, lr / 10):.0e}".replace("e-0", "e-")
    return (f"held-out {what} rose from {record['before']:.4f} to {record['after']:.4f} over the first {record['step']} "
            f"steps ({k} of {n} domains rose): the student may already be trained; lower --lr (this run: {lr:.3g}; "
            f"e.g. {lower}, see docs/train.md 'Starting from a trained student')")


def due(settings: Settings, state: TrainState, total: int) -> bool:
    """Check after this step: it is step `early_check`, before the last (the after-report covers that), with a "before"."""
    n = settings.early_check
    return 0 < n == state.step < total and state.before is not None


def early_check(parts: Components, settings: Settings, state: TrainState, warn) -> dict[str, Any]:
    """Re-measure the "before" rows, compare, keep the record in ``state.before`` (so a checkpoint carries it to the
    manifest of a resumed run) and `warn(line)` on a rise. Collective: every rank calls it."""
    import torch

    from distillkit.training.setup import heldout_report

    device = torch.device(parts.dist.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the CPU stream, and this GPU's
        ref = state.before.get("dev", state.before)  # the dev rows' before-report; the test slice's for scores without dev
        now = heldout_report(parts, settings, state, with_kl=ref.get("kl") is not None, split="dev" if "dev" in state.before else "test")
    record = compare(ref, now, state.mixer.domains, state.step)
    state.before["early_check"] = record
    if record["rose"]:
        warn(message(record, parts.lr.base_lr))
    return record


def stop_error(record: dict[str, Any], checkpoint: str) -> EarlyCheckStop:
    return EarlyCheckStop(f"stopped after the early held-out check (early_check_stop = true): {record['metric']} rose from "
                          f"{record['before']:.4f} to {record['after']:.4f} over the first {record['step']} steps; "
                          f"{checkpoint} is kept. Lower --lr and rerun with --overwrite, or --resume to go on as configured")


__all__ = ["TOLERANCE", "EarlyCheckStop", "compare", "message", "due", "early_check", "stop_error"]
