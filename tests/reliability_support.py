"""Shared by the reliability tests (test_locks, test_damaged_inputs, test_disk_full, test_messages): the CLI runner,
a gate that holds a real distillkit subprocess at one function, score settings, and damaged model copies. Their shared
inputs (the `reference` score and its `plan`) are fixtures in conftest."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from typer.testing import CliRunner

from distillkit.artifacts import read_artifact
from distillkit.pipelines.score import ScoreConfig

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()



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


def _kill_at_gate(proc, tmp_path: Path, tag: str, what: str) -> None:
    """Wait until the `_gated` process `tag` reaches its gate (failing if it exited first), then SIGKILL it there."""
    try:
        _wait_for(lambda: (tmp_path / f"ready-{tag}").exists() or proc.poll() is not None, what=what)
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()


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


def _train_args(plan: Path, teacher, student, out, *extra: str) -> list[str]:
    return ["train", "--plan", str(plan), "--teacher", str(teacher), "--student", str(student), "--out", str(out),
            "--batch-size", "4", "--seq-len", "48", "--lr", "3e-3", "--set", "eval_heldout=false", "--set", "log_every=100",
            *extra]


def _damaged_copy(src: Path, dest: Path, keep_bytes: int) -> Path:
    shutil.copytree(src, dest)
    f = dest / "model.safetensors"
    f.write_bytes(f.read_bytes()[:keep_bytes])
    return f
