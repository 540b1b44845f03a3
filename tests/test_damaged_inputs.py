"""Damaged model files and non-finite settings: refused before any work with exit 2 and one line naming the file or
setting and the fix; nothing is left behind."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from distillkit import locks
from distillkit.artifacts import partial_dir
from distillkit.cli.main import app
from distillkit.errors import ConfigError, ModelError

from tests.reliability_support import _damaged_copy, _one_line, _train_args, runner

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread for this module


# =========================================================================== 2. damaged model files


@pytest.mark.parametrize("role,keep", [("teacher", 20_000), ("student", 100)])
def test_truncated_weights_exit_2_naming_file_role_and_fix(tmp_path, reference, tiny_teacher_dir, tiny_student_dir, role, keep):
    models = {"teacher": tiny_teacher_dir, "student": tiny_student_dir}
    bad = _damaged_copy(models[role], tmp_path / "bad", keep)  # 20 kB: the data is cut; 100 B: the header is
    models[role] = bad.parent
    out = tmp_path / "score"
    r = runner.invoke(app, ["score", "--data", str(reference["data"]), "--teacher", str(models["teacher"]),
                            "--student", str(models["student"]), "--out", str(out)])
    line = _one_line(r.output)
    assert r.exit_code == 2, r.output
    assert f"the {role} model file {bad} is damaged (truncated" in line and f"pass another --{role}" in line, line
    assert not out.exists() and not partial_dir(out).exists() and not locks.lock_path(out).exists()


def test_model_file_checks(tmp_path, tiny_student_dir):
    from distillkit.models import DamagedModel, check_model_files, load_model

    check_model_files(tiny_student_dir, "student")  # a good model passes
    d = tmp_path / "m"
    shutil.copytree(tiny_student_dir, d)
    with open(d / "model.safetensors", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(DamagedModel, match="10 bytes longer than its header"):
        check_model_files(d, "student")
    with pytest.raises(ModelError, match=r"the student model file .*model\.safetensors is damaged.*--student"):
        load_model(d, role="student")
    shutil.rmtree(d)
    shutil.copytree(tiny_student_dir, d)
    (d / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(DamagedModel, match=r"config\.json is damaged \(not valid JSON"):
        check_model_files(d, "teacher")
    shutil.rmtree(d)
    shutil.copytree(tiny_student_dir, d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(DamagedModel, match="model-00002-of-00002.safetensors, which is missing"):
        check_model_files(d, "teacher")
    (d / "model.safetensors.index.json").unlink()
    torch.save({"w": torch.zeros(1000)}, d / "pytorch_model.bin")
    (d / "pytorch_model.bin").write_bytes((d / "pytorch_model.bin").read_bytes()[:500])
    with pytest.raises(DamagedModel, match=r"pytorch_model\.bin is damaged \(truncated"):
        check_model_files(d, "student")


def test_truncated_student_refused_by_train(tmp_path, plan, tiny_teacher_dir, tiny_student_dir):
    bad = _damaged_copy(tiny_student_dir, tmp_path / "bad", 50_000)
    out = tmp_path / "train"
    r = runner.invoke(app, _train_args(plan, tiny_teacher_dir, bad.parent, out, "--steps", "2"))
    line = _one_line(r.output)
    assert r.exit_code == 2 and f"the student model file {bad} is damaged (truncated: 50000 of " in line, r.output
    assert "pass another --student" in line
    assert not out.exists() and not partial_dir(out).exists() and not locks.lock_path(out).exists()


# =========================================================================== 5. non-finite settings


@pytest.mark.parametrize("setting", ["lr=inf", "temperature=nan", "kd_weight=-inf", "max_grad_norm=inf", "lr=1e400"])
def test_non_finite_settings_are_refused_before_any_work(tmp_path, setting):
    out = tmp_path / "train"
    r = runner.invoke(app, ["train", "--plan", str(tmp_path / "no-plan"), "--teacher", "t", "--student", "s",
                            "--out", str(out), "--set", setting])
    line = _one_line(r.output)
    key = setting.split("=")[0]
    assert r.exit_code == 2 and f"{key} must be a finite number" in line, r.output
    assert not out.exists() and not partial_dir(out).exists()
    r = runner.invoke(app, ["eval", "--models", "m", "--out", str(tmp_path / "e"), "--set", "gen_top_p=nan"])
    assert r.exit_code == 2 and "gen_top_p must be a finite number" in r.output


def test_non_finite_settings_in_code_and_the_diverged_message(tmp_path, plan, tiny_teacher_dir, tiny_student_dir):
    from distillkit.pipelines.train import TrainConfig, run
    from distillkit.training.loop import TrainingDiverged

    cfg = TrainConfig(plan=str(plan), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir), out=str(tmp_path / "t"),
                      batch_size=4, seq_len=48, eval_heldout=False, steps=3)
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        run(replace(cfg, lr=float("inf")))
    assert not (tmp_path / "t").exists() and not partial_dir(tmp_path / "t").exists()
    with pytest.raises(TrainingDiverged) as e:  # finite, but diverges at once: no checkpoint to resume from
        run(replace(cfg, lr=1e30, warmup_fraction=0.0, max_grad_norm=0.0, save_every=0))
    msg = str(e.value)
    assert "no checkpoint was written yet, so there is nothing to resume" in msg and "--resume" not in msg
    assert "--overwrite" in msg
