"""What one stage records for the next: typed, versioned sections of a manifest.

The score stage records how its samples were read and what it stored (`ScoreRecord`, top-level keys
of a score manifest, as since schema 1); the plan stage records its schedule and mixture settings
(`PlanRecord`, the manifest's ``plan`` table). Both are written and read only here, so a stage that
consumes them gets typed fields instead of a dict, and a record of another version is read (older
ones whose keys are all there) or refused with a message naming the fix.

Version 1 is the layout written before records carried a version number: a manifest without
``record_version`` is version 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from distillkit.errors import ArtifactError

RECORD_VERSION = 1
StageUnit = Literal["steps", "epochs"]


def _version(section: Mapping[str, Any], where: str) -> int:
    v = section.get("record_version", 1)
    if not isinstance(v, int) or v < 1:
        raise ArtifactError(f"{where}: record_version {v!r} is not a version number; rebuild the artifact with --overwrite")
    if v > RECORD_VERSION:
        raise ArtifactError(f"{where} was written by a newer distillkit (record version {v}; this one reads up to "
                            f"{RECORD_VERSION}): upgrade distillkit or rebuild the artifact with --overwrite")
    return v


def _need(section: Mapping[str, Any], keys: tuple[str, ...], where: str, fix: str) -> None:
    missing = [k for k in keys if k not in section]
    if missing:
        raise ArtifactError(f"{where} lacks {', '.join(missing)}; {fix}")


# ---------------------------------------------------------------- score -> plan, train, eval


@dataclass(frozen=True)
class TopKInfo:
    """The teacher's stored top-k log-probs (``topk/part-*.arrow``; docs/artifacts.md)."""

    k: int
    format: Literal["uint8", "float16"]
    ids: str  # Arrow type of the token ids
    rows_per_batch: int
    tail: str = "topk_logtail"


@dataclass(frozen=True)
class ScoreRecord:
    shard: tuple[int, int]  # (i, n): slice i of n of the data; (0, 1) for a whole or merged artifact
    format: Literal["text", "instruction"]
    data_sources: tuple[str, ...]
    teacher_dir: str
    student_dir: str
    topk: TopKInfo | None = None
    teacher: dict[str, Any] | None = None  # a corrected teacher's provenance (models.corrected_teacher); None otherwise
    chat_template: bool = False  # prompts were wrapped in the tokenizer's chat template

    @property
    def is_shard(self) -> bool:
        return self.shard[1] > 1

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"record_version": RECORD_VERSION, "shard": list(self.shard), "format": self.format,
                               "data_sources": list(self.data_sources), "teacher_dir": self.teacher_dir,
                               "student_dir": self.student_dir}
        if self.topk is not None:
            out["topk"] = dataclasses.asdict(self.topk)
        if self.teacher is not None:
            out["teacher"] = self.teacher
        if self.chat_template:
            out["chat_template"] = True
        return out

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str = "score manifest") -> "ScoreRecord":
        _version(manifest, where)
        fix = "rescore with `distillkit score --overwrite`"
        _need(manifest, ("format",), where, fix)
        shard = manifest.get("shard", [0, 1])
        if not (isinstance(shard, (list, tuple)) and len(shard) == 2 and all(isinstance(x, int) for x in shard)):
            raise ArtifactError(f"{where}: shard {shard!r} is not [i, n]; {fix}")
        topk = manifest.get("topk")
        try:
            info = TopKInfo(**topk) if topk else None
        except TypeError as e:
            raise ArtifactError(f"{where}: topk {topk!r} is not a top-k record ({e}); {fix}") from None
        return cls(shard=(int(shard[0]), int(shard[1])), format=manifest["format"],
                   data_sources=tuple(manifest.get("data_sources", ())), teacher_dir=str(manifest.get("teacher_dir", "")),
                   student_dir=str(manifest.get("student_dir", "")), topk=info, teacher=manifest.get("teacher"),
                   chat_template=bool(manifest.get("chat_template", False)))


# ---------------------------------------------------------------- plan -> train


@dataclass(frozen=True)
class StageLength:
    unit: StageUnit
    value: float


@dataclass(frozen=True)
class PlannedStage:
    """One cumulative curriculum stage: its pool and the temperature and KD weight it trains at."""

    stage: int
    fraction: float
    temperature: float
    kd_weight: float
    num_samples: int
    num_new: int
    num_tokens: int
    domains: dict[str, int] = field(default_factory=dict)  # pool size per domain


@dataclass(frozen=True)
class MixtureSettings:
    kind: str  # distillkit.mixture's choice ("ddk", "uniform", "proportional", ...)
    alpha: float
    interval: int
    smoothing: bool
    # DDK's discrepancy factor: "ratio" (the paper's Eq. 1/2; what plans without the key used) or
    # "log-ratio" with temperature tau. Left out of the manifest when they are ("ratio", 1.0), so plans of
    # the paper's factor keep the manifest they had.
    factor: str = "ratio"
    tau: float = 1.0


@dataclass(frozen=True)
class PlanRecord:
    measure: str
    num_stages: int
    stage_length: StageLength
    restart_optimizer: bool
    stages: tuple[PlannedStage, ...]
    mixture: MixtureSettings
    scores: str  # the score artifact the plan was built from
    scores_manifest_sha256: str
    train_samples: int
    measure_help: str = ""
    curriculum: bool = True
    stratified: str = ""
    validation_samples: dict[str, int] = field(default_factory=dict)
    domains_without_train: tuple[str, ...] = ()
    rrf_k: int | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``plan`` table."""
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        d["domains_without_train"] = list(self.domains_without_train)
        if self.rrf_k is None:
            d.pop("rrf_k")
        if (self.mixture.factor, self.mixture.tau) == ("ratio", 1.0):
            d["mixture"].pop("factor")
            d["mixture"].pop("tau")
        return {"record_version": RECORD_VERSION, **d}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str = "plan manifest") -> "PlanRecord":
        fix = "rebuild it with `distillkit plan --overwrite`"
        info = manifest.get("plan")
        if not isinstance(info, Mapping):
            raise ArtifactError(f"{where} lacks the 'plan' schedule; {fix}")
        _version(info, where)
        _need(info, ("measure", "num_stages", "stage_length", "restart_optimizer", "stages", "mixture", "scores"), where, fix)
        try:
            length = StageLength(**info["stage_length"])
            stages = tuple(PlannedStage(**s) for s in sorted(info["stages"], key=lambda s: s["stage"]))
            mixture = MixtureSettings(**info["mixture"])
        except (TypeError, KeyError) as e:
            raise ArtifactError(f"{where}: the plan schedule is malformed ({e}); {fix}") from None
        if not stages:
            raise ArtifactError(f"{where}: the plan has no stages; {fix}")
        if length.unit not in ("steps", "epochs"):
            raise ArtifactError(f"{where}: stage_length unit {length.unit!r} is not steps or epochs; {fix}")
        return cls(measure=info["measure"], num_stages=int(info["num_stages"]), stage_length=length,
                   restart_optimizer=bool(info["restart_optimizer"]), stages=stages, mixture=mixture, scores=str(info["scores"]),
                   scores_manifest_sha256=str(info.get("scores_manifest_sha256", "")),
                   train_samples=int(info.get("train_samples", 0)), measure_help=info.get("measure_help", ""),
                   curriculum=bool(info.get("curriculum", True)), stratified=info.get("stratified", ""),
                   validation_samples=dict(info.get("validation_samples", {})),
                   domains_without_train=tuple(info.get("domains_without_train", ())), rrf_k=info.get("rrf_k"))


# ---------------------------------------------------------------- train, eval, prune: what they report


@dataclass(frozen=True)
class RunStage:
    """One stage of a finished train run, as optimizer steps [start, end)."""

    stage: int
    start: int
    end: int
    temperature: float
    kd_weight: float
    num_samples: int


@dataclass(frozen=True)
class TrainRecord:
    """The manifest's ``train`` table: what the run trained (stages, loss, mixture, lr) and from what."""

    stages: tuple[RunStage, ...]
    total_steps: int
    restart_optimizer: bool
    mixture: dict[str, Any]
    loss: dict[str, Any]
    plan: str
    scores: str
    lr: dict[str, Any]
    objective: Literal["distill", "sft"] = "distill"  # sft: teacher_mode = none (an SFT baseline or teacher correction)
    teacher: dict[str, Any] | None = None  # a corrected teacher's provenance (models.corrected_teacher)
    on_policy: dict[str, Any] | None = None

    def to_manifest(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.on_policy is None:
            d.pop("on_policy")
        return {"record_version": RECORD_VERSION, **d}

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any], where: str = "train manifest") -> "TrainRecord":
        _version(section, where)
        fix = "retrain with `distillkit train --overwrite`"
        _need(section, ("stages", "total_steps", "loss"), where, fix)
        loss = dict(section.get("loss", {}))
        objective = section.get("objective") or ("sft" if loss.get("teacher_mode") == "none" else "distill")
        return cls(stages=tuple(RunStage(**s) for s in section["stages"]), total_steps=int(section["total_steps"]),
                   restart_optimizer=bool(section.get("restart_optimizer", False)), mixture=dict(section.get("mixture", {})),
                   loss=loss, plan=str(section.get("plan", "")), scores=str(section.get("scores", "")),
                   lr=dict(section.get("lr", {})), objective=objective, teacher=section.get("teacher"),
                   on_policy=section.get("on_policy"))


@dataclass(frozen=True)
class EvaluatedModel:
    label: str
    role: str  # "teacher" or "model"
    spec: str
    path: str
    provenance: dict[str, Any] | None = None  # a train artifact's model: models.corrected_teacher


@dataclass(frozen=True)
class EvalRecord:
    """The manifest's ``eval`` table: which models were measured on what, and how answers were sampled."""

    models: tuple[EvaluatedModel, ...]
    tasks: tuple[str, ...] = ()
    task_splits: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    limit: int | None = None
    data_format: str | None = None
    data_sources: tuple[str, ...] | None = None
    olmo_eval_version: str | None = None
    generation: dict[str, Any] | None = None

    def to_manifest(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = [{k: v for k, v in m.items() if not (k == "provenance" and v is None)} for m in d["models"]]
        d["tasks"] = list(self.tasks)
        d["data_sources"] = list(self.data_sources) if self.data_sources is not None else None
        return {"record_version": RECORD_VERSION, **d}

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any], where: str = "eval manifest") -> "EvalRecord":
        _version(section, where)
        _need(section, ("models",), where, "re-evaluate with `distillkit eval --overwrite`")
        src = section.get("data_sources")
        return cls(models=tuple(EvaluatedModel(**m) for m in section["models"]), tasks=tuple(section.get("tasks", ())),
                   task_splits=dict(section.get("task_splits", {})), baseline=section.get("baseline"), limit=section.get("limit"),
                   data_format=section.get("data_format"), data_sources=tuple(src) if src is not None else None,
                   olmo_eval_version=section.get("olmo_eval_version"), generation=section.get("generation"))


@dataclass(frozen=True)
class PruneRecord:
    """The manifest's ``prune`` table: which layers of which model the student keeps."""

    source: str
    source_dir: str
    kept_layers: tuple[int, ...]
    dropped_layers: tuple[int, ...]

    def to_manifest(self) -> dict[str, Any]:
        return {"record_version": RECORD_VERSION, "source": self.source, "source_dir": self.source_dir,
                "kept_layers": list(self.kept_layers), "dropped_layers": list(self.dropped_layers)}

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any], where: str = "prune manifest") -> "PruneRecord":
        _version(section, where)
        _need(section, ("source", "kept_layers"), where, "prune again with `distillkit prune --overwrite`")
        return cls(source=str(section["source"]), source_dir=str(section.get("source_dir", "")),
                   kept_layers=tuple(int(x) for x in section["kept_layers"]),
                   dropped_layers=tuple(int(x) for x in section.get("dropped_layers", ())))


__all__ = ["RECORD_VERSION", "ScoreRecord", "TopKInfo", "PlanRecord", "PlannedStage", "StageLength", "MixtureSettings",
           "RunStage", "TrainRecord", "EvaluatedModel", "EvalRecord", "PruneRecord"]
