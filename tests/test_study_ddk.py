"""The DDK-regime study (issue 14): its recipe (arms, budget, re-weightings, the setup commands, every config it
implies), the gap-closed metric against a hand computation, a two-arm mixture study on tiny models end to end with
the new metrics in the result files and the report, and result files written before the metric still summarized."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillkit.cli.main import app
from tests.conftest import make_texts, write_jsonl

runner = CliRunner()
RECIPE = Path(__file__).resolve().parents[1] / "distillkit" / "pipelines" / "study-ddk-demo.toml"
NEW_METRICS = ("gap_closed_min", "gap_closed_mean", "gap_closed_sd", "kl_closed_min", "kl_closed_mean", "kl_closed_sd",
               "ratio_max")


# ---------------------------------------------------------------- the recipe

def test_recipe_has_the_planned_arms_budget_and_reweightings():
    from distillkit.study import read_study

    rec = read_study(RECIPE)
    assert list(rec.arms) == ["uniform", "proportional", "ddk", "ddk-nofs", "ddk-logratio"]
    assert rec.baseline == "uniform" and rec.seeds == (0, 1, 2) and rec.jobs == 2 and rec.threads == 1
    assert rec.scores == Path("runs/ddk/score-warm") and rec.student == "runs/ddk/warm/student"
    assert rec.budget.unit == "steps"
    steps, interval = int(rec.budget.value), rec.plan["ddk_interval"]
    # re-weightings after steps K, 2K, ...: at least 10, and at least 10 that still change what is trained
    assert steps // interval >= 10 and (steps - 1) // interval >= 10
    assert rec.plan["curriculum"] is False and rec.plan["ddk_alpha"] == 0.5
    assert {k: rec.train[k] for k in ("loss", "loss_form", "kd_weight", "temperature", "teacher_mode", "precision")} == {
        "loss": "fkl", "loss_form": "additive", "kd_weight": 0.2, "temperature": 1.0, "teacher_mode": "offline",
        "precision": "fp32"}
    assert rec.eval["dtype"] == "float32" and rec.eval["tasks"] == "none" and rec.references
    mixtures = {a: (arm.plan.get("mixture"), arm.train.get("mixture")) for a, arm in rec.arms.items()}
    assert mixtures == {"uniform": ("uniform", "uniform"), "proportional": ("proportional", "static"),
                        "ddk": ("ddk", "ddk"), "ddk-nofs": ("ddk", "ddk"), "ddk-logratio": ("ddk", "ddk")}
    assert rec.arms["ddk-nofs"].plan["ddk_smoothing"] is False
    assert rec.arms["ddk-logratio"].plan["ddk_factor"] == "log-ratio" and rec.arms["ddk-logratio"].plan["ddk_tau"] == 1.0
    assert not {k for a in rec.arms.values() for k in a.train} - {"mixture"}  # arms differ in the mixture only


def _setup_commands() -> list[str]:
    """The header's commands, continuation lines joined."""
    cmds: list[str] = []
    for line in RECIPE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        body = line[1:].strip()
        if body.startswith("distillkit "):
            cmds.append(body.split("#")[0].strip())
        elif cmds and cmds[-1].endswith("\\"):
            cmds[-1] = cmds[-1][:-1].rstrip() + " " + body
    return cmds


def _opt(cmd: str, name: str) -> str | None:
    m = re.search(rf"{name}[ =](\S+)", cmd)
    return m.group(1) if m else None


def test_recipe_header_is_the_setup_in_order():
    from distillkit.study import read_study

    cmds = _setup_commands()
    assert [c.split()[1] for c in cmds] == ["prune", "score", "plan", "train", "score", "inspect", "study"]
    prune, score0, plan, warm, score1, _inspect, study = cmds
    assert "--drop-layers 16-22" in prune and _opt(prune, "--out") == "runs/ddk/pruned"
    # both scores split the data the same way, so the warm start never trains on the study's held-out documents
    split = ("--data", "--max-per-domain", "--val-size", "--val-fraction", "--max-length", "--seed")
    assert {k: _opt(score0, k) for k in split} == {k: _opt(score1, k) for k in split}
    assert _opt(score0, "--student") == _opt(warm, "--student") == "runs/ddk/pruned"
    assert _opt(plan, "--scores") == _opt(score0, "--out") and _opt(warm, "--plan") == _opt(plan, "--out")
    assert "curriculum=false" in plan and _opt(plan, "--mixture") == "uniform"
    assert _opt(warm, "--mixture") == "uniform" and _opt(warm, "--seed") == "0" and _opt(warm, "--steps") == _opt(plan, "--stage-length")
    rec = read_study(RECIPE)
    assert _opt(score1, "--student") == f"{_opt(warm, '--out')}/student" == rec.student
    assert _opt(score1, "--out") == str(rec.scores) and _opt(score1, "--top-k") == "64"
    # train measures every held-out document the scores' teacher perplexity is over
    assert rec.train["heldout_docs"] == int(_opt(score1, "--val-size"))
    assert rec.train["seq_len"] == rec.eval["max_length"] == int(_opt(score1, "--max-length"))
    assert study.split()[2] == RECIPE.stem


@pytest.fixture(scope="module")
def ddk_scores(tmp_path_factory, tiny_teacher_dir, tiny_student_dir) -> Path:
    """Plain text in 3 domains, teacher top-8. The roles are swapped: the random 1-layer model has the lower
    perplexity, so as the teacher it leaves the student a gap to close in every domain."""
    from distillkit.config import resolve
    from distillkit.pipelines.score import ScoreConfig, run

    tmp = tmp_path_factory.mktemp("ddkscore")
    rows = [{"text": t, "domain": d} for d, seed in (("alpha", 10), ("beta", 11), ("gamma", 12)) for t in make_texts(24, seed=seed)]
    data = write_jsonl(tmp / "data.jsonl", rows)
    out = tmp / "score"
    run(resolve(ScoreConfig, options=dict(data=str(data), teacher=str(tiny_student_dir), student=str(tiny_teacher_dir),
                                           out=str(out), dtype="float32", max_length=48, top_k=8, val_size=4, val_fraction=0.2)))
    return out


def test_recipe_resolves_every_config_and_plans_equal_budgets(tmp_path, ddk_scores, one_thread):
    """With a (tiny) score artifact where the recipe expects it, every plan/train/eval config the recipe implies
    resolves, the plans are built, every arm trains 150 steps of 4, and the plans record each arm's mixture."""
    from distillkit.artifacts import read_artifact
    from distillkit.pipelines.study import _make_plans, check_budgets, prepare
    from distillkit.study import read_study

    shutil.copytree(ddk_scores, tmp_path / "score-warm")
    rec = read_study(RECIPE, out=str(tmp_path), results=str(tmp_path / "results"))
    sp = prepare(rec)
    assert len(sp.jobs) == 5 * 3 + 1  # arms x seeds + the reference evaluation
    assert {j.train.steps for j in sp.jobs if j.train is not None} == {150}
    assert {j.train.student for j in sp.jobs if j.train is not None} == {str(tmp_path / "warm" / "student")}
    _make_plans(sp)
    budgets = check_budgets(sp)
    assert {a: (b["steps"], b["sequences"], b["stages"]) for a, b in budgets.items()} == {a: (150, 600, 1) for a in rec.arms}
    mix = {a: read_artifact(cfg.out, "plan").manifest["plan"]["mixture"] for a, cfg in sp.plans.items()}
    assert mix["uniform"]["kind"] == "uniform" and mix["proportional"]["kind"] == "proportional"
    assert mix["ddk"]["kind"] == "ddk" and mix["ddk"]["interval"] == 12 and mix["ddk"]["smoothing"] is True
    assert mix["ddk-nofs"]["smoothing"] is False
    assert mix["ddk-logratio"].get("factor") == "log-ratio" and mix["ddk-logratio"].get("tau") == 1.0
    assert mix["ddk"].get("factor", "ratio") == "ratio"


# ---------------------------------------------------------------- gap closed, by hand

HELD = [
    {"domain": "a", "tokens": 100, "teacher_ppl": 10.0, "student_ppl_before": 15.0, "student_ppl_after": 12.0,
     "kl_before": 0.5, "kl_after": 0.2},
    {"domain": "b", "tokens": 100, "teacher_ppl": 20.0, "student_ppl_before": 36.0, "student_ppl_after": 32.0,
     "kl_before": 0.8, "kl_after": 0.6},
    {"domain": "c", "tokens": 100, "teacher_ppl": 30.0, "student_ppl_before": 31.0, "student_ppl_after": 29.0,
     "kl_before": 0.1, "kl_after": 0.12},
]


def test_gap_closed_known_answer():
    from distillkit.study_results import gap_closed

    g = gap_closed(HELD)
    # ppl: a (15 − 12)/(15 − 10) = 0.6; b (36 − 32)/(36 − 20) = 0.25; c starts at 31/30 = 1.033 < 1.05: left out
    assert g["domains"]["gap_closed"] == pytest.approx({"a": 0.6, "b": 0.25}) and g["excluded"] == ["c"]
    m = g["metrics"]
    assert m["gap_closed_mean"] == pytest.approx(0.425) and m["gap_closed_sd"] == pytest.approx(0.175)  # ddof 0
    assert m["gap_closed_min"] == pytest.approx(0.25) and g["lagging"]["gap_closed"] == "b"
    # KL: a 0.3/0.5 = 0.6; b 0.2/0.8 = 0.25; c −0.02/0.1 = −0.2 -> mean 0.216667, sd sqrt(0.321667/3) = 0.327448
    assert g["domains"]["kl_closed"] == pytest.approx({"a": 0.6, "b": 0.25, "c": -0.2})
    assert m["kl_closed_mean"] == pytest.approx(0.65 / 3) and m["kl_closed_sd"] == pytest.approx(0.327448, rel=1e-5)
    assert m["kl_closed_min"] == pytest.approx(-0.2) and g["lagging"]["kl_closed"] == "c"
    # after training: 12/10 = 1.2, 32/20 = 1.6, 29/30 = 0.967
    assert m["ratio_max"] == pytest.approx(1.6)
    assert g["domains"]["ratio_before"] == pytest.approx({"a": 1.5, "b": 1.8, "c": 31 / 30})


def test_gap_closed_without_kl_or_with_one_domain():
    from distillkit.study_results import gap_closed

    no_kl = [{k: v for k, v in r.items() if not k.startswith("kl")} for r in HELD]
    g = gap_closed(no_kl)
    assert "kl_closed_mean" not in g["metrics"] and "kl_closed" not in g["domains"] and "gap_closed_min" in g["metrics"]
    one = gap_closed(HELD[:1])
    assert one["metrics"]["gap_closed_mean"] == pytest.approx(0.6)
    assert "gap_closed_sd" not in one["metrics"] and "gap_closed_min" not in one["metrics"] and not one["lagging"]


# ---------------------------------------------------------------- a two-arm mixture study on tiny models

STUDY = """
out = "{out}"
scores = "{scores}"
seeds = [0, 1]
baseline = "uniform"
[budget]
steps = 6
[plan]
curriculum = false
ddk_interval = 2
[train]
teacher_mode = "offline"
loss = "fkl"
loss_form = "additive"
kd_weight = 0.2
temperature = 1.0
batch_size = 4
seq_len = 48
lr = 1e-3
save_every = 3
precision = "fp32"
[eval]
tasks = "none"
max_length = 48
dtype = "float32"
[arms.uniform]
plan = {{ mixture = "uniform" }}
train = {{ mixture = "uniform" }}
[arms.ddk]
plan = {{ mixture = "ddk" }}
train = {{ mixture = "ddk" }}
"""


def _strip_new(r: dict) -> dict:
    """A result file as written before the gap-closed metrics existed."""
    r = json.loads(json.dumps(r))
    r.pop("gap", None)
    for k in NEW_METRICS:
        r["metrics"].pop(k, None)
    for k in ("teacher_ppl", "train_ppl_before", "kl_before", "ratio_before", "ratio_after", "gap_closed", "kl_closed"):
        r["domains"].pop(k, None)
    return r


def test_mixture_study_end_to_end_reports_gap_closed(tmp_path, ddk_scores):
    from distillkit.artifacts import read_artifact
    from distillkit.stats import paired
    from distillkit.study import load_results, read_study
    from distillkit.study_report import write_report
    from distillkit.study_results import gap_closed

    out, results = tmp_path / "runs", tmp_path / "results"
    recipe = tmp_path / "study.toml"
    recipe.write_text(STUDY.format(out=out, scores=ddk_scores), encoding="utf-8")
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--threads", "1"])
    assert r.exit_code == 0, r.output
    got = load_results(results)
    assert set(got) == {("uniform", 0), ("ddk", 0), ("uniform", 1), ("ddk", 1)}

    # every result file holds gap_closed() of its run's heldout.arrow
    for (arm, seed), res in got.items():
        held = read_artifact(out / "runs" / f"{arm}-s{seed}" / "train", "train").table("heldout.arrow").to_pylist()
        want = gap_closed(held)
        assert set(want["metrics"]) == set(NEW_METRICS)  # the swapped tiny models leave a gap in every domain
        assert {k: res["metrics"][k] for k in NEW_METRICS} == pytest.approx(want["metrics"])
        assert res["domains"]["gap_closed"] == pytest.approx(want["domains"]["gap_closed"])
        assert set(res["domains"]["gap_closed"]) == {"alpha", "beta", "gamma"}
        assert res["gap"]["lagging"]["gap_closed"] in {"alpha", "beta", "gamma"} and res["gap"]["excluded"] == []
    # both arms start from the same checkpoint on the same documents; DDK re-weighted after steps 2, 4, 6
    assert got[("uniform", 0)]["domains"]["train_ppl_before"] == pytest.approx(got[("ddk", 1)]["domains"]["train_ppl_before"])
    mix = read_artifact(out / "runs" / "ddk-s0" / "train", "train").table("mixture.arrow").to_pylist()
    assert sorted({m["step"] for m in mix}) == [0, 2, 4, 6]

    report = (results / "report.md").read_text(encoding="utf-8")
    for heading in ("## Starting point", "## ppl gap closed in the lagging domain", "## KL closed, mean over domains",
                    "## Perplexity gap closed per domain", "## KL closed per domain", "## largest per-domain ppl ratio"):
        assert heading in report, heading
    assert (results / "gap_closed.png").is_file() and (results / "study.png").is_file()
    d = paired({s: got[("ddk", s)]["metrics"]["gap_closed_min"] * 100 for s in (0, 1)},
               {s: got[("uniform", s)]["metrics"]["gap_closed_min"] * 100 for s in (0, 1)})
    from distillkit.study_report import _fine

    f = _fine("{:.1f}", d.mean, d.hi - d.lo)  # one decimal, more where the CI is narrower than that shows
    assert f"{f.format(d.mean)} [{f.format(d.lo)}, {f.format(d.hi)}]" in report
    # the per-domain table: each arm's mean over seeds, the other arm's paired difference in brackets
    alpha = [got[("ddk", s)]["domains"]["gap_closed"]["alpha"] - got[("uniform", s)]["domains"]["gap_closed"]["alpha"] for s in (0, 1)]
    assert f"({100 * sum(alpha) / 2:+.1f})" in report
    ratio = got[("uniform", 0)]["domains"]["ratio_before"]
    assert f"{max(ratio.values()):.3f}" in report  # the starting ratios, lagging first

    # result files written before the metric existed still summarize, alone or beside new ones
    rec = read_study(recipe, results=str(tmp_path / "old"))
    old = {k: _strip_new(v) for k, v in got.items()}
    rec.results.mkdir()
    text = write_report(rec, old, None, {}).read_text(encoding="utf-8")
    assert "## held-out perplexity" in text and "gap closed" not in text and "Starting point" not in text
    mixed = {**old, ("ddk", 0): got[("ddk", 0)], ("ddk", 1): got[("ddk", 1)]}
    text = write_report(rec, mixed, None, {}).read_text(encoding="utf-8")
    assert "## ppl gap closed in the lagging domain" in text and "too few runs" in text


def test_old_result_files_summarize_with_the_new_metrics_absent():
    from distillkit.study import METRICS, summarize
    from distillkit.study_report import metrics_present

    old = {("a", s): {"metrics": {"ppl": 50.0 + s, "kl": 1.0 + s / 10}, "domains": {"ppl": {"x": 50.0, "y": 51.0}}} for s in (0, 1)}
    old.update({("b", s): {"metrics": {"ppl": 48.0 + s, "kl": 0.9 + s / 10}} for s in (0, 1)})
    assert [m.key for m in metrics_present(old)] == ["ppl", "kl"]
    gap = next(m for m in METRICS if m.key == "gap_closed_min")
    assert summarize(old, ["a", "b"], "a", gap) == []
    s = {x.arm: x for x in summarize(old, ["a", "b"], "a", METRICS[1])}
    assert s["b"].paired.mean == pytest.approx(-2.0) and not math.isnan(s["b"].estimate.mean)
