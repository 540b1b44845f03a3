"""What stages hand each other: typed, versioned manifest records; each stage's result; prune as a stage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from distillkit.artifacts import read_artifact
from distillkit.errors import ArtifactError, OutputExists
from distillkit.records import RECORD_VERSION, MixtureSettings, PlannedStage, PlanRecord, ScoreRecord, StageLength, TopKInfo

PLAN = PlanRecord(
    measure="rrf", num_stages=2, stage_length=StageLength("steps", 3), restart_optimizer=True,
    stages=(PlannedStage(0, 0.5, 1.0, 0.7, 4, 4, 40, {"a": 2, "b": 2}), PlannedStage(1, 1.0, 2.0, 1.0, 8, 4, 80, {"a": 4, "b": 4})),
    mixture=MixtureSettings("ddk", 0.5, 5, True), scores="/x/score", scores_manifest_sha256="ab" * 32, train_samples=8,
    measure_help="fused ranks", validation_samples={"a": 1, "b": 1}, rrf_k=60,
)


def test_plan_record_round_trips_through_json():
    manifest = json.loads(json.dumps({"plan": PLAN.to_manifest()}))
    assert manifest["plan"]["record_version"] == RECORD_VERSION
    assert PlanRecord.from_manifest(manifest) == PLAN


def test_plan_record_of_version_1_without_version_key_is_read():
    """Plans written before records carried a version (the same keys) read as version 1."""
    old = PLAN.to_manifest()
    old.pop("record_version")
    old.pop("rrf_k")
    assert PlanRecord.from_manifest({"plan": old}) == dataclasses.replace(PLAN, rrf_k=None)


@pytest.mark.parametrize("change, words", [
    (lambda p: p.update(record_version=RECORD_VERSION + 1), "newer distillkit"),
    (lambda p: p.pop("stages"), "lacks stages; rebuild it with `distillkit plan --overwrite`"),
    (lambda p: p.update(stages=[]), "no stages"),
    (lambda p: p["stage_length"].update(unit="hours"), "steps or epochs"),
    (lambda p: p["mixture"].pop("alpha"), "malformed"),
])
def test_plan_record_refused_with_the_fix(change, words):
    info = json.loads(json.dumps(PLAN.to_manifest()))
    change(info)
    with pytest.raises(ArtifactError) as e:
        PlanRecord.from_manifest({"plan": info}, where="p/manifest.json")
    assert words in str(e.value) and "p/manifest.json" in str(e.value)


def test_plan_record_missing_section():
    with pytest.raises(ArtifactError, match="lacks the 'plan' schedule; rebuild it with `distillkit plan --overwrite`"):
        PlanRecord.from_manifest({"kind": "plan"})


def test_score_record_round_trip_and_old_layout():
    rec = ScoreRecord(shard=(1, 4), format="instruction", data_sources=("a.jsonl",), teacher_dir="/t", student_dir="/s",
                      topk=TopKInfo(k=8, format="uint8", ids="uint16", rows_per_batch=64))
    m = json.loads(json.dumps(rec.to_manifest()))
    assert ScoreRecord.from_manifest(m) == rec and ScoreRecord.from_manifest(m).is_shard
    m.pop("record_version")  # written before records were versioned
    assert ScoreRecord.from_manifest(m) == rec
    with pytest.raises(ArtifactError, match="not \\[i, n\\]"):
        ScoreRecord.from_manifest({**m, "shard": "0/1"})
    with pytest.raises(ArtifactError, match="lacks format; rescore"):
        ScoreRecord.from_manifest({"shard": [0, 1]})


# --------------------------------------------------------------------------- stage results


def test_stage_results_ran_then_skipped(tmp_path):
    from tests.test_plan import random_rows, samples_table, write_scores
    from distillkit.pipelines.plan import PlanConfig, run

    scores = write_scores(tmp_path / "score", samples_table(random_rows({"a": 6, "b": 4})))
    cfg = PlanConfig(scores=str(scores), out=str(tmp_path / "plan"), stages=2)
    first = run(cfg)
    assert (first.stage, first.status, first.path) == ("plan", "ran", tmp_path / "plan")
    assert first.manifest == json.loads((tmp_path / "plan" / "manifest.json").read_text())
    record = PlanRecord.from_manifest(first.manifest)
    assert record.num_stages == 2 and record.scores == str(scores) and len(record.stages) == 2
    again = run(cfg)
    assert again.status == "skipped" and again.manifest == first.manifest


def test_prune_is_a_stage(tmp_path, tiny_teacher_dir):
    from distillkit.models import load_model, model_fingerprint
    from distillkit.pipelines.prune import PruneConfig, run
    from distillkit.prune import PRUNE_FILE

    out = tmp_path / "student"
    cfg = PruneConfig(model=str(tiny_teacher_dir), out=str(out), drop_layers="1")
    res = run(cfg)
    assert (res.stage, res.status) == ("prune", "ran")
    art = read_artifact(out, "prune")  # an artifact and a model directory at once
    assert art.manifest["figures"]["layers"] == 1 and art.manifest["prune"]["dropped_layers"] == [1]
    assert {"config.json", "model.safetensors", PRUNE_FILE} <= set(art.files())
    assert load_model(out).config.num_hidden_layers == 1
    fp = model_fingerprint(out)
    assert run(cfg).status == "skipped" and model_fingerprint(out) == fp
    again = tmp_path / "again"  # the same prune made later (another date and commit in its records): the same student
    run(dataclasses.replace(cfg, out=str(again)))
    rec = json.loads((again / PRUNE_FILE).read_text())
    (again / PRUNE_FILE).write_text(json.dumps({**rec, "created_at": "2031-01-01T00:00:00+00:00", "source_dir": "/elsewhere"}))
    assert model_fingerprint(again) == fp
    with pytest.raises(OutputExists, match="another config"):
        run(dataclasses.replace(cfg, drop_layers="0"))
    assert run(dataclasses.replace(cfg, drop_layers="0"), overwrite=True).manifest["prune"]["dropped_layers"] == [0]


def test_prune_refuses_a_student_pruned_before_prune_was_a_stage(tmp_path, tiny_teacher_dir):
    from distillkit.pipelines.prune import PruneConfig, run
    from distillkit.prune import prune_model

    out = tmp_path / "student"
    prune_model(str(tiny_teacher_dir), out, drop_layers="1")  # the old layout: weights + distillkit-prune.json, no manifest
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputExists, match="earlier distillkit .* pass --overwrite"):
        run(PruneConfig(model=str(tiny_teacher_dir), out=str(out), drop_layers="1"))
    assert sorted(p.name for p in out.iterdir()) == before
    assert run(PruneConfig(model=str(tiny_teacher_dir), out=str(out), drop_layers="1"), overwrite=True).status == "ran"


def test_killed_prune_is_redone(tmp_path, tiny_teacher_dir, monkeypatch):
    """A prune killed while writing leaves <out>.partial; the next run redoes it there and swaps it in."""
    from distillkit import prune as library
    from distillkit.artifacts import partial_dir
    from distillkit.pipelines.prune import PruneConfig, run

    out = tmp_path / "student"
    cfg = PruneConfig(model=str(tiny_teacher_dir), out=str(out), drop_layers="1")

    def killed(src, dest, **kw):
        (Path(dest) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(library, "write_pruned", killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert partial_dir(out).is_dir() and not out.exists()
    monkeypatch.undo()
    res = run(cfg)
    assert res.status == "resumed" and not partial_dir(out).exists()
    assert read_artifact(out, "prune").manifest["figures"]["layers"] == 1


def test_train_eval_and_prune_records_round_trip_and_read_older_tables():
    from distillkit.records import EvalRecord, EvaluatedModel, PruneRecord, RunStage, TrainRecord

    tr = TrainRecord(stages=(RunStage(0, 0, 4, 1.0, 0.7, 12),), total_steps=4, restart_optimizer=False,
                     mixture={"mode": "uniform"}, loss={"kind": "fkl", "teacher_mode": "none"}, plan="p", scores="s",
                     lr={"peak": 1e-4}, objective="sft", teacher=None)
    m = tr.to_manifest()
    assert m["record_version"] == 1 and "on_policy" not in m and TrainRecord.from_manifest(m) == tr
    # a train table written before records (no version, no objective): the objective follows from teacher_mode
    old = {k: v for k, v in m.items() if k not in ("record_version", "objective", "teacher")}
    assert TrainRecord.from_manifest(old).objective == "sft"
    with pytest.raises(ArtifactError, match="lacks stages"):
        TrainRecord.from_manifest({"total_steps": 1, "loss": {}})
    ev = EvalRecord(models=(EvaluatedModel("t", "teacher", "x", "/x", {"corrected": True}), EvaluatedModel("s", "model", "y", "/y")),
                    tasks=("arc_easy",), limit=5)
    em = ev.to_manifest()
    assert "provenance" not in em["models"][1] and EvalRecord.from_manifest(em) == ev
    pr = PruneRecord("smollm2-135m", "/c", (0, 1, 2), (3,))
    assert PruneRecord.from_manifest(pr.to_manifest()) == pr
    assert PruneRecord.from_manifest({"source": "m", "kept_layers": [0]}).dropped_layers == ()
