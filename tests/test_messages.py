"""Messages that state the real reason: an edited or damaged score artifact, --overwrite, eval outside a git checkout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distillkit.cli.main import app
from distillkit.errors import DamagedOutput
from distillkit.pipelines.score import run as run_score

from tests.reliability_support import _env, runner

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread for this module


# =========================================================================== 6. messages that state the real reason


@pytest.fixture
def recipe(tmp_path, reference, tiny_teacher_dir, tiny_student_dir):
    path = tmp_path / "r.toml"
    path.write_text(f'out = "{tmp_path / "run"}"\n[score]\ndata = "{reference["data"]}"\nteacher = "{tiny_teacher_dir}"\n'
                    f'student = "{tiny_student_dir}"\nmax_length = 48\ndtype = "float32"\n'
                    '[plan]\nstage_unit = "steps"\nstage_length = 1\n')
    r = runner.invoke(app, ["run", str(path)])
    assert r.exit_code == 0, r.output
    return path, tmp_path / "run"


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_edited_score_manifest_is_named_as_the_reason(recipe):
    path, root = recipe
    m = root / "score" / "manifest.json"
    d = json.loads(m.read_text())
    d["figures"]["wall_s"] = 1e9
    m.write_text(json.dumps(d))
    r = runner.invoke(app, ["run", str(path)])
    text = _norm(r.output)
    assert r.exit_code == 2, r.output
    assert f"holds a plan artifact made from another score artifact: {root / 'score'} had manifest sha256" in text, text
    assert "rebuilt or edited since" in text and "--from plan --overwrite" in text
    assert "another config" not in text


def test_damaged_score_artifact_is_not_skipped(recipe):
    path, root = recipe
    f = root / "score" / "samples.arrow"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    f.write_bytes(bytes(data))
    r = runner.invoke(app, ["run", str(path)])
    text = _norm(r.output)
    assert r.exit_code == 2, r.output
    assert "nothing to do" not in text
    assert "[score]" in text and "made with this config, but it is damaged (samples.arrow was modified" in text, text
    assert "--from score --overwrite" in text
    from distillkit.pipelines.recipe import load_recipe

    with pytest.raises(DamagedOutput, match="pass --overwrite to redo it"):
        run_score(load_recipe(str(path)).configs["score"])  # the stage itself, without the recipe
    f.write_bytes(bytes(data[:-100]))  # truncated
    r = runner.invoke(app, ["run", str(path)])
    assert r.exit_code == 2 and "samples.arrow has" in _norm(r.output) and "nothing to do" not in r.output


def test_overwrite_from_score_says_why(recipe):
    path, root = recipe
    r = runner.invoke(app, ["run", str(path), "--from", "score", "--overwrite"])
    text = _norm(r.output)
    assert r.exit_code == 0, r.output
    assert f"score (1/2) → {root / 'score'}: redoing it (--overwrite)" in text
    assert f"plan (2/2) → {root / 'plan'}: redoing it (--overwrite)" in text
    assert "student is new" not in text


def test_eval_outside_a_git_checkout_prints_no_git_error(tmp_path, tiny_student_dir):
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=tmp_path, capture_output=True).returncode == 0:
        pytest.skip(f"{tmp_path} is inside a git checkout")
    from tests.test_eval import _toy_task

    tasks = _toy_task(tmp_path / "tasks", n=4)
    r = subprocess.run([sys.executable, "-m", "distillkit.cli.main", "eval", "--models", str(tiny_student_dir), "--out",
                        str(tmp_path / "eval"), "--tasks", "toy_mc", "--include-path", str(tasks), "--dtype", "float32",
                        "--set", "plot=false"], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "not a git repository" not in r.stderr + r.stdout
