"""When each curriculum stage runs, with which temperature and KD weight, and the learning rate.

Stage lengths come from the plan: ``stage_length = {"unit": "steps", "value": n}`` gives every stage
n optimizer steps; ``"epochs"`` gives stage s ``ceil(value * pool_size(s) / global_batch)`` steps
(one epoch = as many sequences as the stage's pool holds). A run's total defaults to the sum; a
shorter ``--steps`` stops inside the curriculum, a longer one keeps training on the last stage.

The learning rate is a pure function of the step: linear warmup, then cosine decay to
``min_lr_ratio * lr``, over the whole run, or over each stage when the optimizer restarts per stage
(POCL's reference code). Being a function of the step, it resumes exactly from a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from distillkit.errors import ConfigError

if TYPE_CHECKING:
    from distillkit.records import PlanRecord


@dataclass(frozen=True, slots=True)
class Stage:
    stage: int
    start: int  # first optimizer step (0-based) of the stage
    end: int  # one past its last step
    temperature: float
    kd_weight: float
    num_samples: int  # the stage's pool size


def _get(x: Any, name: str) -> Any:
    return x[name] if isinstance(x, Mapping) else getattr(x, name)


def plan_stages(plan: PlanRecord | Mapping[str, Any], global_batch: int, total_steps: int | None = None,
                temperature: float | None = None, kd_weight: float | None = None) -> list[Stage]:
    """The plan's stages as step ranges; `temperature` / `kd_weight` override every stage's value.

    `plan`: the plan's `PlanRecord` (or its manifest table as a dict). Stages that start at or
    after `total_steps` are dropped; the last kept stage runs to the end.
    """
    length = _get(plan, "stage_length")
    unit, value = _get(length, "unit"), _get(length, "value")
    starts, start = [], 0
    rows = sorted(_get(plan, "stages"), key=lambda s: _get(s, "stage"))
    if not rows:
        raise ConfigError("the plan has no stages")
    for s in rows:
        if unit == "steps":
            n = int(value)
        else:
            n = math.ceil(float(value) * int(_get(s, "num_samples")) / global_batch)
        starts.append((start, start + max(n, 1)))
        start += max(n, 1)
    total = start if total_steps is None else int(total_steps)
    if total < 1:
        raise ConfigError(f"steps must be >= 1, got {total}")
    out = []
    for s, (a, b) in zip(rows, starts):
        if a >= total:
            break
        out.append(Stage(int(_get(s, "stage")), a, b, float(_get(s, "temperature") if temperature is None else temperature),
                         float(_get(s, "kd_weight") if kd_weight is None else kd_weight), int(_get(s, "num_samples"))))
    last = out[-1]
    out[-1] = Stage(last.stage, last.start, total, last.temperature, last.kd_weight, last.num_samples)
    return out


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage that optimizer step `step` (0-based) belongs to."""
    for s in stages:
        if step < s.end:
            return s
    return stages[-1]


def lr_factor(step: int, start: int, length: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 to `min_ratio`, for steps of [start, start+length)."""
    s = step - start
    if s < warmup:
        return (s + 1) / warmup
    progress = min(max((s - warmup) / max(length - warmup, 1), 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True, slots=True)
class LRSchedule:
    """Warmup + cosine over the whole run, or restarted per stage."""

    base_lr: float
    stages: tuple[Stage, ...]
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    restart_per_stage: bool = False

    def segment(self, step: int) -> tuple[int, int]:
        if self.restart_per_stage:
            s = stage_at(self.stages, step)
            return s.start, s.end - s.start
        return 0, self.stages[-1].end

    def __call__(self, step: int) -> float:
        start, length = self.segment(step)
        warmup = int(round(self.warmup_fraction * length))
        return self.base_lr * lr_factor(step, start, length, warmup, self.min_lr_ratio)


__all__ = ["Stage", "plan_stages", "stage_at", "lr_factor", "LRSchedule"]
