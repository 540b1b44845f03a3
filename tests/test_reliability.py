"""Issue 16: one writer per artifact (locks), damaged model files, a full disk, killed prunes, non-finite settings,
and messages that state the real reason. Tiny in-process models; the concurrent and killed writers are real
subprocesses, held at a gate (a file the test creates) so that what overlaps is decided here, not by timing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from distillkit import locks
from distillkit.artifacts import ArtifactWriter, partial_dir, read_artifact
from distillkit.cli.main import app
from distillkit.errors import ArtifactLocked, ConfigError, DamagedOutput, ModelError, OutputExists
from distillkit.pipelines.score import ScoreConfig
from distillkit.pipelines.score import run as run_score
from tests.conftest import make_texts, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread for this module


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}


def _one_line(output: str) -> str:
    """The error the command printed: exactly one line, and no traceback (progress bars of loaders aside)."""
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


# A distillkit command (or a library call) with one function held at a gate: `ready` appears when the process reaches
# it (before or after the original runs), and it waits there until the test creates `gate`.
GATED = textwrap.dedent('''
    import importlib, os, sys, time
    from pathlib import Path

    gate, ready = Path(os.environ["DK_GATE"]), Path(os.environ["DK_READY"])
    module, _, attr = os.environ["DK_PATCH"].partition(":")
    owner_name, _, name = attr.rpartition(".")
    owner = importlib.import_module(module)
    if owner_name:
        owner = getattr(owner, owner_name)
    original = getattr(owner, name)
    after = os.environ.get("DK_GATE_WHEN") == "after"

    def wait():
        ready.touch()
        deadline = time.time() + 300
        while not gate.exists() and time.time() < deadline:
            time.sleep(0.02)

    def gated(*a, **k):
        if not after:
            wait()
        out = original(*a, **k)
        if after:
            wait()
        return out

    setattr(owner, name, gated)
    if os.environ.get("DK_CALL"):
        exec(os.environ["DK_CALL"])
    else:
        sys.argv = ["distillkit", *sys.argv[1:]]
        from distillkit.cli.main import main
        main()
''')


def _gated(tmp_path: Path, tag: str, args: list[str], patch: str, when: str = "before", call: str | None = None):
    script = tmp_path / "gated.py"
    script.write_text(GATED, encoding="utf-8")
    env = {**_env(), "DK_GATE": str(tmp_path / "gate"), "DK_READY": str(tmp_path / f"ready-{tag}"), "DK_PATCH": patch,
           "DK_GATE_WHEN": when, **({"DK_CALL": call} if call else {})}
    return subprocess.Popen([sys.executable, str(script), *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(cond, timeout: float = 180.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _score_cfg(data, teacher, student, out, **kw) -> ScoreConfig:
    return ScoreConfig(data=str(data), teacher=str(teacher), student=str(student), out=str(out), dtype="float32",
                       max_length=48, chunk_size=20, **kw)


def _score_args(cfg: ScoreConfig) -> list[str]:
    return ["score", "--data", cfg.data, "--teacher", cfg.teacher, "--student", cfg.student, "--out", cfg.out,
            "--dtype", "float32", "--max-length", str(cfg.max_length), "--chunk-size", str(cfg.chunk_size)]


def _same_scores(a: Path, b: Path) -> None:
    """Two score artifacts hold the same result: equal tables, the same identity (config hash)."""
    x, y = read_artifact(a, "score"), read_artifact(b, "score")
    assert x.manifest["config_sha256"] == y.manifest["config_sha256"]
    assert [f["name"] for f in x.manifest["files"]] == [f["name"] for f in y.manifest["files"]]
    for name in ("samples.arrow", "domains.arrow"):
        assert x.table(name).equals(y.table(name)), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    """Score data and one uninterrupted single-writer run over it: what every other run must equal."""
    root = tmp_path_factory.mktemp("ref")
    rows = []
    for d, seed in (("alpha", 10), ("beta", 11), ("gamma", 12)):
        rows += [{"text": t, "domain": d} for t in make_texts(20, seed=seed)]
    data = write_jsonl(root / "corpus.jsonl", rows)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = _score_cfg(data, tiny_teacher_dir, tiny_student_dir, root / "score")
    run_score(cfg)
    torch.set_num_threads(n)
    return {"data": data, "cfg": cfg, "out": root / "score"}


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
    try:
        _wait_for(lambda: (tmp_path / "ready-k").exists() or proc.poll() is not None, what="the writer at its gate")
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
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


# =========================================================================== 2. damaged model files


def _damaged_copy(src: Path, dest: Path, keep_bytes: int) -> Path:
    shutil.copytree(src, dest)
    f = dest / "model.safetensors"
    f.write_bytes(f.read_bytes()[:keep_bytes])
    return f


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


# =========================================================================== 3. a full disk


@pytest.fixture(scope="module")
def plan(tmp_path_factory, reference):
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan

    out = tmp_path_factory.mktemp("plan") / "plan"
    run_plan(PlanConfig(scores=str(reference["out"]), out=str(out), stage_unit="steps", stage_length=1))
    return out


def _train_args(plan: Path, teacher, student, out, *extra: str) -> list[str]:
    return ["train", "--plan", str(plan), "--teacher", str(teacher), "--student", str(student), "--out", str(out),
            "--batch-size", "4", "--seq-len", "48", "--lr", "3e-3", "--set", "eval_heldout=false", "--set", "log_every=100",
            *extra]


def test_truncated_student_refused_by_train(tmp_path, plan, tiny_teacher_dir, tiny_student_dir):
    bad = _damaged_copy(tiny_student_dir, tmp_path / "bad", 50_000)
    out = tmp_path / "train"
    r = runner.invoke(app, _train_args(plan, tiny_teacher_dir, bad.parent, out, "--steps", "2"))
    line = _one_line(r.output)
    assert r.exit_code == 2 and f"the student model file {bad} is damaged (truncated: 50000 of " in line, r.output
    assert "pass another --student" in line
    assert not out.exists() and not partial_dir(out).exists() and not locks.lock_path(out).exists()


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


# =========================================================================== 4. a killed prune leaves nothing behind


def test_killed_prune_model_leaves_no_temp_copy(tmp_path, tiny_teacher_dir):
    out = tmp_path / "run" / "student"
    out.parent.mkdir()
    call = f"from distillkit.prune import prune_model; prune_model({str(tiny_teacher_dir)!r}, {str(out)!r}, drop_layers='1')"
    proc = _gated(tmp_path, "p", [], "distillkit.prune:write_pruned", when="after", call=call)
    try:
        _wait_for(lambda: (tmp_path / "ready-p").exists() or proc.poll() is not None, what="the prune at its gate")
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
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
    try:
        _wait_for(lambda: (tmp_path / "ready-s").exists() or proc.poll() is not None, what="the prune at its gate")
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert (partial_dir(out) / "model.safetensors").is_file() and locks.lock_path(out).is_file()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "gated.py" and not p.name.startswith("ready")) == ["student"]


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
