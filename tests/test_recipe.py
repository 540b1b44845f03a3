"""`distillkit run`: a recipe chains stages and skips the finished ones."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.main import app
from distillkit.artifacts import read_artifact


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
