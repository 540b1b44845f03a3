"""One writer per artifact (locks), and writers killed mid-way (score, prune) leave nothing the next run trips on.
The concurrent and killed writers are real subprocesses, held at a gate (a file the test creates) so that what
overlaps is decided here, not by timing."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from distillkit import locks
from distillkit.artifacts import ArtifactWriter, partial_dir, read_artifact
from distillkit.cli.main import app
from distillkit.errors import ArtifactLocked, OutputExists
from distillkit.pipelines.score import run as run_score
from tests.reliability_support import _gated, _kill_at_gate, _one_line, _same_scores, _score_args, _wait_for, runner

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread for this module


# =========================================================================== 1. one writer per artifact


def test_claim_release_and_stale_locks(tmp_path):
    lock = tmp_path / "q" / "job.lock"
    assert locks.claim(lock) and not locks.claim(lock)  # not re-entrant: a queue item is claimed once
    held = locks.read_holder(lock)
    assert held.pid == os.getpid() and held.host and held.started and lock.is_file()
    locks.release(lock)
    assert not lock.exists()
    locks.release(lock)  # never raises

    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": held.host, "started": "2020-01-01T00:00:00Z"}))
    assert locks.claim(lock) and locks.read_holder(lock).pid == os.getpid()  # its holder is gone: taken over
    locks.release(lock)

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        alive = {"pid": sleeper.pid, "host": held.host, "started": "2020-01-01T00:00:00Z",
                 "proc_start": locks._proc_start(sleeper.pid)}
        lock.write_text(json.dumps(alive))
        assert not locks.claim(lock) and locks.read_holder(lock).pid == sleeper.pid  # alive: refused, untouched
        lock.write_text(json.dumps({**alive, "host": "elsewhere"}))
        assert not locks.claim(lock)  # another host's processes cannot be seen: never judged stale
        if alive["proc_start"] is not None:
            lock.write_text(json.dumps({**alive, "proc_start": alive["proc_start"] - 1}))
            assert locks.claim(lock)  # the pid runs, but it is another program (pid reused): stale
            locks.release(lock)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": held.host, "started": "x"}))
    assert locks.claim(lock)  # this process's pid, but this process does not hold it: left by a failed writer
    locks.release(lock)
    lock.write_text("")
    os.utime(lock, (time.time() - 60, time.time() - 60))
    assert locks.claim(lock)  # an empty lock file, long ago: its creator died before writing it
    locks.release(lock)


def test_artifact_lock_is_reentrant_for_its_thread_only(tmp_path):
    out = tmp_path / "art"
    with locks.artifact_lock(out):
        w = ArtifactWriter(out, "demo", {"a": 1})  # distillkit run holds the stage's lock while the stage writes
        w.write("t.arrow", pa.table({"x": [1]}))
        errors = []

        def other():
            try:
                ArtifactWriter(out, "demo", {"a": 1}, overwrite=True)
            except ArtifactLocked as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and f"pid {os.getpid()}" in errors[0]
        w.finish()
        assert locks.lock_path(out).is_file()  # still held by the outer block
    assert not locks.lock_path(out).exists() and read_artifact(out, "demo")


def test_two_concurrent_score_writers_one_is_refused(tmp_path, reference):
    """Started together: one writes, the other exits 2 naming it; --resume and --overwrite (another config) are
    refused while it runs; the artifact it leaves equals a single run's."""
    cfg = replace(reference["cfg"], out=str(tmp_path / "score"))
    procs = [_gated(tmp_path, str(i), _score_args(cfg), "distillkit.artifacts:ArtifactWriter.write") for i in range(2)]
    try:
        _wait_for(lambda: any(p.poll() is not None for p in procs), what="one writer to be refused")
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate()
        line = _one_line(err)
        assert loser.returncode == 2, err
        assert f"is being written by another process (pid {winner.pid}, started " in line and "--resume" in line, line
        assert "interrupted" not in line
        _wait_for(lambda: any((tmp_path / f"ready-{i}").exists() for i in range(2)), what="the writer at its gate")
        assert winner.poll() is None and locks.read_holder(locks.lock_path(cfg.out)).pid == winner.pid

        with pytest.raises(ArtifactLocked, match=f"pid {winner.pid}"):
            run_score(cfg, resume=True)  # following the old advice: still refused, nothing touched
        with pytest.raises(ArtifactLocked, match=f"pid {winner.pid}"):
            run_score(replace(cfg, max_length=32), overwrite=True)
        assert partial_dir(cfg.out).is_dir() and not Path(cfg.out).exists()
        with pytest.raises(Exception, match="being written right now"):
            read_artifact(cfg.out, "score")  # a reader is told it is running, not that it was interrupted

        (tmp_path / "gate").touch()
        out, err = winner.communicate(timeout=300)
        assert winner.returncode == 0, err
        assert "wrote" in out + err
    finally:
        (tmp_path / "gate").touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert not locks.lock_path(cfg.out).exists() and not partial_dir(cfg.out).exists()
    _same_scores(Path(cfg.out), reference["out"])


def test_lock_of_a_killed_writer_is_taken_over(tmp_path, reference):
    cfg = replace(reference["cfg"], out=str(tmp_path / "score"))
    proc = _gated(tmp_path, "k", _score_args(cfg), "distillkit.artifacts:ArtifactWriter.write")
    _kill_at_gate(proc, tmp_path, "k", "the writer at its gate")
    assert locks.read_holder(locks.lock_path(cfg.out)).pid == proc.pid  # left behind by the killed writer
    with pytest.raises(OutputExists, match="interrupted run of this config .* --resume"):
        run_score(cfg)  # the stale lock is taken over, and now "interrupted" is the truth
    res = run_score(cfg, resume=True)
    assert res.status == "resumed"
    assert not locks.lock_path(cfg.out).exists() and not partial_dir(cfg.out).exists()
    _same_scores(Path(cfg.out), reference["out"])


def test_recipe_refuses_a_stage_whose_output_another_process_writes(tmp_path, tiny_teacher_dir):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'out = "{tmp_path / "run"}"\n[prune]\nmodel = "{tiny_teacher_dir}"\ndrop_layers = "1"\n')
    lock = locks.lock_path(tmp_path / "run" / "student")
    lock.parent.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": locks._HOST,
                                    "started": "2030-01-02T03:04:05Z", "proc_start": locks._proc_start(sleeper.pid)}))
        r = runner.invoke(app, ["run", str(recipe)])
        assert r.exit_code == 2, r.output
        assert f"pid {sleeper.pid}, started 2030-01-02T03:04:05Z" in r.output and "wait for it to finish" in r.output
        assert not (tmp_path / "run" / "student").exists() and not partial_dir(tmp_path / "run" / "student").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    r = runner.invoke(app, ["run", str(recipe)])  # its holder is gone: taken over
    assert r.exit_code == 0, r.output
    assert not lock.exists() and read_artifact(tmp_path / "run" / "student", "prune")


def test_writer_recovers_what_a_killed_writer_left(tmp_path):
    out = tmp_path / "art"
    w = ArtifactWriter(out, "demo", {"a": 1})
    w.write("t.arrow", pa.table({"x": [1, 2]}))
    (w.partial / ".t.arrow.tmp999999").write_bytes(b"half a file")  # a killed write_arrow's temp file
    w.close()
    w = ArtifactWriter(out, "demo", {"a": 1}, resume=True)
    assert not (w.partial / ".t.arrow.tmp999999").exists() and w.has("t.arrow")
    w.finish()
    # killed between writing manifest.json and the swap: the finished artifact is swapped in by the next writer
    w = ArtifactWriter(tmp_path / "b", "demo", {"a": 1})
    w.write("t.arrow", pa.table({"x": [1]}))
    w.finish()
    os.replace(tmp_path / "b", partial_dir(tmp_path / "b"))
    (tmp_path / ".b.old999999").mkdir()
    w = ArtifactWriter(tmp_path / "b", "demo", {"a": 1})
    assert w.done and read_artifact(tmp_path / "b", "demo") and not (tmp_path / ".b.old999999").exists()


def test_a_symlinked_out_and_its_target_are_one_output_with_one_lock(tmp_path, tiny_teacher_dir):
    """``--out L`` with L -> T: the lock, the partial and the result are T's, so a writer of L and one of T exclude each
    other; `prune_model` (the library's other whole-directory swap) writes through a link the same way."""
    disk = tmp_path / "disk"
    (disk / "T").mkdir(parents=True)
    link = tmp_path / "L"
    link.symlink_to(disk / "T")
    assert locks.lock_path(link) == locks.lock_path(disk / "T") == disk / "T.lock"
    w = ArtifactWriter(link, "demo", {"a": 1})
    assert locks.live_holder(disk / "T.lock").pid == os.getpid() and not (tmp_path / "L.lock").exists()
    w.finish()
    from distillkit.prune import prune_model

    (disk / "S").mkdir()
    student = tmp_path / "student"
    student.symlink_to(disk / "S")
    for overwrite in (False, True):
        prune_model(str(tiny_teacher_dir), student, drop_layers="1", overwrite=overwrite)
        assert student.is_symlink() and (disk / "S" / "config.json").is_file(), overwrite
        assert sorted(p.name for p in tmp_path.iterdir()) == ["L", "disk", "student"], overwrite
        assert sorted(p.name for p in disk.iterdir()) == ["S", "T"], overwrite


# =========================================================================== 4. a killed prune leaves nothing behind


def test_killed_prune_model_leaves_no_temp_copy(tmp_path, tiny_teacher_dir):
    out = tmp_path / "run" / "student"
    out.parent.mkdir()
    call = f"from distillkit.prune import prune_model; prune_model({str(tiny_teacher_dir)!r}, {str(out)!r}, drop_layers='1')"
    proc = _gated(tmp_path, "p", [], "distillkit.prune:write_pruned", when="after", call=call)
    _kill_at_gate(proc, tmp_path, "p", "the prune at its gate")
    left = out.parent / f".student.tmp{proc.pid}"
    assert (left / "model.safetensors").is_file()  # the full copy of the weights the kill left
    sleeper = subprocess.Popen(["sleep", "60"])
    busy = out.parent / f".student.tmp{sleeper.pid}"  # a prune that still runs: not touched
    busy.mkdir()
    try:
        from distillkit.prune import prune_model

        prune_model(str(tiny_teacher_dir), out, drop_layers="1")
        assert not left.exists() and busy.is_dir()
        assert sorted(p.name for p in out.parent.iterdir()) == sorted(["student", busy.name])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_killed_prune_stage_is_cleaned_up_by_the_next_run(tmp_path, tiny_teacher_dir):
    out = tmp_path / "student"
    args = ["prune", "--model", str(tiny_teacher_dir), "--out", str(out), "--drop-layers", "1"]
    proc = _gated(tmp_path, "s", args, "distillkit.prune:write_pruned", when="after")
    _kill_at_gate(proc, tmp_path, "s", "the prune at its gate")
    assert (partial_dir(out) / "model.safetensors").is_file() and locks.lock_path(out).is_file()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "gated.py" and not p.name.startswith("ready")) == ["student"]
