"""A full disk while train or score writes: one clear error, the last good checkpoint kept, no temporary files left."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distillkit import locks
from distillkit.artifacts import partial_dir, read_artifact
from distillkit.cli.main import app
from distillkit.pipelines.score import run as run_score

from tests.reliability_support import ROOT, _env, _one_line, _same_scores, _score_args, _train_args, runner

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread for this module


# =========================================================================== a full disk


def _no_temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*") if ".tmp" in p.name]


def test_disk_full_while_writing_a_checkpoint(tmp_path, plan, tiny_teacher_dir, tiny_student_dir, monkeypatch):
    """The write fails half-way (ENOSPC): one line naming the checkpoint, the half-written one removed, the last
    complete one kept; --resume continues from it once there is space."""
    from distillkit.training.checkpoint import latest_checkpoint, load_checkpoint

    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 6:  # the checkpoints of steps 1 and 2 (three files each) fit; step 3 does not
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "train"
    r = runner.invoke(app, _train_args(plan, tiny_teacher_dir, tiny_student_dir, out, "--steps", "4", "--save-every", "1"))
    line = _one_line(r.output)
    ckpts = partial_dir(out) / "checkpoints"
    assert r.exit_code == 1, r.output
    assert f"no space left on device while writing checkpoint {ckpts / 'step-00000003'}" in line, line
    assert f"the last complete checkpoint (step 2, {ckpts / 'step-00000002'}) is kept" in line and "--resume" in line
    assert _no_temp_files(partial_dir(out)) == [] and latest_checkpoint(ckpts)[0] == 2
    load_checkpoint(ckpts / "step-00000002")
    assert not locks.lock_path(out).exists()
    monkeypatch.undo()
    r = runner.invoke(app, _train_args(plan, tiny_teacher_dir, tiny_student_dir, out, "--steps", "4", "--save-every", "1",
                                       "--resume"))
    assert r.exit_code == 0, r.output
    assert read_artifact(out, "train").manifest["figures"]["resumed_from_step"] == 2


def test_torch_save_unexpected_pos_counts_as_disk_full_though_the_cleanup_frees_space(tmp_path, monkeypatch):
    """Seen in a real demo run: a full disk makes torch.save fail with only "unexpected pos"; removing the half-written
    checkpoint then frees its space again, so the disk must be judged before the cleanup, not after."""
    import shutil
    from collections import namedtuple

    from distillkit.errors import DiskFull
    from distillkit.training.checkpoint import save_checkpoint

    usage = namedtuple("usage", "total used free")
    half_written = lambda: any(p.name.startswith(".step-") for p in (tmp_path / "ck").glob(".*"))  # noqa: E731
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 0 if half_written() else 1 << 30))

    def save(obj, f, *a, **k):
        f.write(b"\0" * 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 683711872 vs 683711760")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(DiskFull, match="no space left on device while writing checkpoint .*step-00000003.*--resume"):
        save_checkpoint(tmp_path / "ck", 3, {}, {}, {}, {})
    assert _no_temp_files(tmp_path) == []
    # the same failure with space to spare is not called a full disk
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 0, 10 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_checkpoint(tmp_path / "ck", 4, {}, {}, {}, {})


def test_disk_full_while_saving_the_trained_student(tmp_path, plan, tiny_teacher_dir, tiny_student_dir, monkeypatch):
    from transformers import PreTrainedModel

    def full(self, dest, **kw):
        Path(dest).mkdir(parents=True, exist_ok=True)
        (Path(dest) / "model.safetensors").write_bytes(b"\0" * 1000)
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "train"
    r = runner.invoke(app, _train_args(plan, tiny_teacher_dir, tiny_student_dir, out, "--steps", "2", "--save-every", "0"))
    line = _one_line(r.output)
    student = partial_dir(out) / "student"
    assert r.exit_code == 1 and f"no space left on device while writing {student}" in line, r.output
    assert "the last complete checkpoint (step 2" in line and not student.exists()
    monkeypatch.undo()
    r = runner.invoke(app, _train_args(plan, tiny_teacher_dir, tiny_student_dir, out, "--steps", "2", "--save-every", "0",
                                       "--resume"))
    assert r.exit_code == 0, r.output
    assert (out / "student" / "model.safetensors").is_file()


def test_disk_full_while_writing_score_chunks(tmp_path, reference, monkeypatch):
    import pyarrow.ipc as ipc

    real_new_file, calls = ipc.new_file, []

    class Full:
        def __init__(self, sink):
            self.sink = sink

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write_table(self, table):
            self.sink.write(b"\0" * 2048)
            raise OSError(errno.ENOSPC, "No space left on device")

    def new_file(sink, schema, **kw):
        calls.append(1)
        return Full(sink) if len(calls) == 2 else real_new_file(sink, schema, **kw)

    monkeypatch.setattr(ipc, "new_file", new_file)
    cfg = replace(reference["cfg"], out=str(tmp_path / "score"))
    r = runner.invoke(app, _score_args(cfg))
    line = _one_line(r.output)
    chunks = partial_dir(cfg.out) / "chunks"
    assert r.exit_code == 1 and f"no space left on device while writing {chunks / 'part-00001.arrow'}" in line, r.output
    assert sorted(p.name for p in chunks.iterdir()) == ["part-00000.arrow"]  # the unfinished file is gone, the first kept
    monkeypatch.undo()
    assert run_score(cfg, resume=True).status == "resumed"
    _same_scores(Path(cfg.out), reference["out"])


@pytest.fixture
def small_tmpfs(tmp_path):
    """A folder on a tmpfs of a given size (bytes), where this machine lets the test mount one."""
    mounts = []

    def make(size: int) -> Path:
        d = tmp_path / f"tmpfs{len(mounts)}"
        d.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here: the simulated ENOSPC tests cover the message and the cleanup")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or 'mount failed'}); "
                        "the simulated ENOSPC tests cover the message and the cleanup")
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_disk_full_on_a_real_tmpfs_during_train(tmp_path, plan, tiny_teacher_dir, tiny_student_dir, small_tmpfs):
    """A tmpfs that holds one checkpoint of the tiny student but not two: the second fails for real."""
    from distillkit.training.checkpoint import latest_checkpoint

    per_ckpt = int(3.3 * (Path(tiny_student_dir) / "model.safetensors").stat().st_size)  # weights + Adam's two moments
    disk = small_tmpfs((int(per_ckpt * 1.5) // 4096 + 1) * 4096)
    out = disk / "train"
    args = _train_args(plan, tiny_teacher_dir, tiny_student_dir, out, "--steps", "3", "--save-every", "1")
    r = subprocess.run([sys.executable, "-m", "distillkit.cli.main", *args], env=_env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    line = _one_line(r.stderr)
    ckpts = partial_dir(out) / "checkpoints"
    assert r.returncode == 1, r.stderr
    assert f"no space left on device while writing checkpoint {ckpts / 'step-00000002'}" in line, line
    assert f"the last complete checkpoint (step 1, {ckpts / 'step-00000001'}) is kept" in line
    assert _no_temp_files(disk) == [] and latest_checkpoint(ckpts)[0] == 1 and not locks.lock_path(out).exists()
    subprocess.run(["mount", "-o", f"remount,size={8 * per_ckpt}", str(disk)], check=True)  # space freed
    r = subprocess.run([sys.executable, "-m", "distillkit.cli.main", *args, "--resume"], env=_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert read_artifact(out, "train").manifest["figures"]["resumed_from_step"] == 1
