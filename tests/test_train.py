"""`distillkit train` end to end on tiny in-process models: real score + plan stages feed it.

One CPU thread throughout: for models this small, OpenMP synchronisation costs more than it saves
(on a busy 2-core machine a 2-thread matmul of 192x64 takes 20 ms instead of 0.1 ms).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from typer.testing import CliRunner

from distillkit.cli.main import app
from distillkit.artifacts import read_artifact
from distillkit.data import DataSpec, load_data
from distillkit.pipelines.train import TrainConfig, run
from tests.conftest import kill_when

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread for this module


def cfg_for(p, out, **kw) -> TrainConfig:
    base = dict(plan=str(p["plan"]), teacher=str(p["teacher"]), student=str(p["student"]), out=str(out), batch_size=4,
                seq_len=48, lr=3e-3, save_every=0, log_every=100)
    return TrainConfig(**{**base, **kw})


def metrics(out) -> dict[str, np.ndarray]:
    t = read_artifact(out, "train").table("metrics.arrow")
    return {c: t.column(c).to_numpy() for c in t.column_names}


def heldout_kl(model, teacher, seqs_ids: list[list[int]]) -> float:
    """Mean KL(teacher || student) per target token, computed here with plain transformers forwards."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ids in seqs_ids:
            x = torch.tensor([ids])
            p = torch.log_softmax(teacher(x).logits[0, :-1].float(), -1)
            q = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
            total += float((p.exp() * (p - q)).sum())
            n += len(ids) - 1
    return total / n


def test_end_to_end_loss_falls_kl_falls_and_student_loads(pipeline, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "train"
    cfg = cfg_for(pipeline, out, steps=24, temperature=1.0, kd_weight=0.5, save_every=10)
    run(cfg)
    m = metrics(out)
    assert m["step"].tolist() == list(range(1, 25))
    assert m["loss"][-4:].mean() < 0.7 * m["loss"][:4].mean(), m["loss"]
    np.testing.assert_allclose(m["loss"], 0.5 * m["ce_loss"] + 0.5 * m["kd_loss"], rtol=1e-6)  # (1-λ)·CE + λ·KD
    assert set(m["temperature"]) == {1.0} and np.isfinite(m["tokens_per_s"]).all() and (m["lr"] > 0).all()

    art = read_artifact(out, "train")
    names = {f["name"] for f in art.manifest["files"]}
    assert {"metrics.arrow", "mixture.arrow", "heldout.arrow", "batches.arrow", "student/config.json",
            "student/model.safetensors", "student/tokenizer.json"} <= names
    assert {n for n in names if n.startswith("checkpoints/")} == {f"checkpoints/step-00000024/{f}" for f in
                                                                  ("model.pt", "optimizer.pt", "trainer.pt", "state.json")}
    assert art.manifest["inputs"][0]["kind"] == "plan" and art.manifest["inputs"][1]["kind"] == "score"
    held = art.table("heldout.arrow").to_pylist()
    assert all(r["kl_after"] < 0.8 * r["kl_before"] and r["student_ppl_after"] < r["student_ppl_before"] for r in held), held

    # The saved student loads in plain transformers; its KL to the teacher on held-out text fell (measured here).
    student = AutoModelForCausalLM.from_pretrained(out / "student").eval()
    before = AutoModelForCausalLM.from_pretrained(pipeline["student"]).eval()
    teacher = AutoModelForCausalLM.from_pretrained(pipeline["teacher"]).eval()
    tok = AutoTokenizer.from_pretrained(out / "student")
    ds = load_data(DataSpec(path=str(pipeline["root"] / "data.jsonl")))
    val = ds.table.filter(pc.equal(ds.table.column("split"), "validation")).column("text").to_pylist()
    ids = [tok(t)["input_ids"][:48] for t in val]
    assert len(ids) >= 6 and heldout_kl(student, teacher, ids) < 0.8 * heldout_kl(before, teacher, ids)


def test_curriculum_stages_switch_at_planned_steps_with_planned_t_and_lambda(pipeline, tmp_path):
    out = tmp_path / "train"
    run(cfg_for(pipeline, out, restart_optimizer=True, warmup_fraction=0.0, mixture="static", eval_heldout=False, tensorboard=True))
    plan = read_artifact(pipeline["plan"], "plan").manifest["plan"]
    m = metrics(out)
    assert m["stage"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # 3 steps per stage, as planned
    for s in plan["stages"]:
        at = m["stage"] == s["stage"]
        assert set(m["temperature"][at]) == {s["temperature"]} and set(m["kd_weight"][at]) == {s["kd_weight"]}
    np.testing.assert_allclose(m["loss"], (1 - m["kd_weight"]) * m["ce_loss"] + m["kd_weight"] * m["kd_loss"], rtol=1e-6)
    assert m["lr"][[0, 3, 6, 9]].tolist() == [3e-3] * 4 and (np.diff(m["lr"][:3]) < 0).all()  # LR restarts per stage

    # Every drawn sample is in its step's pool (curriculum stage <= current stage), and new samples enter on schedule.
    b = read_artifact(out, "train").table("batches.arrow")
    step, stage = b.column("step").to_numpy(), b.column("stage").to_numpy()
    assert len(step) == 12 * 4 and (stage <= m["stage"][step - 1]).all()
    assert set(stage[step <= 3]) == {0} and stage[step > 9].max() == 3
    has_tb = __import__("importlib").util.find_spec("tensorboard") is not None
    assert any(f.startswith("tensorboard/") for f in read_artifact(out, "train").files()) == has_tb  # optional, lazy
    weights = read_artifact(out, "train").table("mixture.arrow")
    assert weights.num_rows == 3 and set(weights.column("step").to_pylist()) == {0}  # static: no updates


def test_ddk_updates_follow_eq2_during_training(pipeline, tmp_path, monkeypatch):
    import distillkit.training.loop as loop
    from distillkit.training.ddk import Heldout

    fixed = np.array([50.0, 20.0, 80.0])  # a fixed measured student perplexity per domain

    def fake_measure(model, seqs, rows, domains, **kw):
        return Heldout(list(domains), np.ones(3), np.log(fixed), None)

    monkeypatch.setattr(loop, "measure_heldout", fake_measure)
    out = tmp_path / "train"
    run(cfg_for(pipeline, out, steps=6, ddk_interval=2, eval_heldout=False))
    plan_mix = read_artifact(pipeline["plan"], "plan").table("mixture.arrow")
    r = plan_mix.column("weight").to_numpy()
    ratio = fixed / plan_mix.column("teacher_ppl").to_numpy()
    hist = read_artifact(out, "train").table("mixture.arrow").to_pandas()
    assert sorted(set(hist["step"])) == [0, 2, 4, 6]
    for step in (2, 4, 6):
        psi = r * np.exp(ratio)
        r = 0.5 * psi / psi.sum() + 0.5 / 3
        np.testing.assert_allclose(hist[hist.step == step]["weight"].to_numpy(), r, rtol=1e-12)
        assert hist[hist.step == step]["student_ppl"].tolist() == pytest.approx(fixed.tolist(), rel=1e-12)


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_chunked_loss_matches_plain_in_training(pipeline, tmp_path, mode):
    kw = dict(steps=3, teacher_mode=mode, eval_heldout=False, mixture="static", loss_form="additive", kd_weight=0.5,
              precision="fp32")  # bf16 autocast (the GPU default) differs by ~3e-4 between the two paths
    run(cfg_for(pipeline, tmp_path / "chunked", chunk_size=7, **kw))
    run(cfg_for(pipeline, tmp_path / "plain", loss_impl="plain", **kw))
    a, b = metrics(tmp_path / "chunked"), metrics(tmp_path / "plain")
    for key in ("loss", "kd_loss", "ce_loss"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5)
    np.testing.assert_allclose(a["loss"], a["ce_loss"] + 0.5 * a["kd_loss"], rtol=1e-6)  # additive: CE + γ·KD


def test_offline_teacher_trains_from_stored_topk(pipeline, tmp_path):
    out = tmp_path / "train"
    run(cfg_for(pipeline, out, steps=16, teacher_mode="offline", temperature=1.0, kd_weight=0.5))
    m = metrics(out)
    assert m["loss"][-4:].mean() < 0.8 * m["loss"][:4].mean(), m["loss"]
    held = read_artifact(out, "train").table("heldout.arrow").to_pylist()
    assert all(r["kl_after"] < r["kl_before"] for r in held), held  # KL on the stored top-8 support (+ tail bucket)


def test_topk_store_streams_parts_and_reads_schema1_artifacts(pipeline, tmp_path):
    """The reader keeps only an index and a few record batches; float16 parts of schema 1 still read."""
    import json

    import pyarrow as pa

    from distillkit.artifacts import ArtifactWriter
    from distillkit.topk import decode_rows
    from distillkit.training.batches import Sequences, TopKStore

    art = read_artifact(pipeline["scores"], "score")
    tables = {name: art.table(name) for name in art.files("topk/")}
    sid = [s for t in tables.values() for s in t.column("sample_id").to_pylist()]
    ids = [np.asarray(x, dtype=np.int64) for t in tables.values() for x in t.column("token_ids").to_pylist()]
    seqs = Sequences(sid, ["d"] * len(sid), ids, np.ones(len(sid), np.int64), np.array([len(x) - 1 for x in ids]))
    store = TopKStore(art.path, seqs, 48, cache_batches=2)
    assert store.k == 8 and store.formats == {"uint8"} and 0 <= store.max_id < 300
    new = [store.rows(i) for i in range(len(seqs))]
    assert len(store.reader.cache) == 2  # streamed: at most cache_batches record batches held
    for (a, b), x in zip(new, ids):
        assert a.shape == b.shape == (len(x) - 1, 8) and a.dtype == np.int64 and b.dtype == np.float32

    # The same top-k in the schema-1 layout: int32 ids, float16 log-probs, one record batch per part, no tail.
    w = ArtifactWriter(tmp_path / "v1", "score", {"schema": 1})
    for name, t in tables.items():
        rows = [decode_rows(b, j) for b in t.to_batches() for j in range(b.num_rows)]
        w.write(name, pa.table({
            "sample_id": t.column("sample_id"), "token_ids": t.column("token_ids").cast(pa.list_(pa.int32())),
            "topk_ids": pa.array([r[0].tolist() for r in rows], pa.list_(pa.list_(pa.int32(), 8))),
            "topk_logprobs": pa.array([r[1].astype(np.float16).tolist() for r in rows], pa.list_(pa.list_(pa.float16(), 8)))}),
            compression="zstd")
    w.finish()
    m = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps({**m, "schema_version": 1}))
    old = TopKStore(tmp_path / "v1", seqs, 48)
    assert old.formats == {"float16-v1"} and old.max_id == store.max_id
    for i, (a, b) in enumerate(new):
        oa, ob = old.rows(i)
        np.testing.assert_array_equal(oa, a)
        np.testing.assert_allclose(ob, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["rkl", "jsd", "skl", "srkl", "tvd", "akl", "taid", "jeffreys"])
def test_every_divergence_trains(pipeline, tmp_path, kind):
    out = tmp_path / kind
    run(cfg_for(pipeline, out, steps=3, loss=kind, eval_heldout=False, mixture="static"))
    m = metrics(out)
    assert np.isfinite(m["loss"]).all() and (m["kd_loss"] >= 0).all()
    if kind == "taid":
        assert m["taid_t"][0] == pytest.approx(0.4) and m["taid_t"][-1] > 0.4 and (np.diff(m["taid_t"]) >= 0).all()
    else:
        assert np.isnan(m["taid_t"]).all()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(pipeline, tmp_path):
    from distillkit.training.loop import TrainingDiverged

    out = tmp_path / "train"
    with pytest.raises(TrainingDiverged, match=r"at step \d+ .*the last good checkpoint is step \d+") as e:
        run(cfg_for(pipeline, out, lr=1e30, warmup_fraction=0.0, max_grad_norm=0.0, save_every=1, eval_heldout=False))
    step = int(str(e.value).split("at step ")[1].split()[0])
    partial = tmp_path / "train.partial"
    assert not out.exists() and (partial / "checkpoints" / f"step-{step - 1:08d}" / "model.pt").is_file()
    assert "--resume" in str(e.value)


def test_vocabulary_mismatch_refused_before_training(pipeline, tmp_path, other_tok_model_dir):
    out = tmp_path / "train"
    r = runner.invoke(app, ["train", "--plan", str(pipeline["plan"]), "--teacher", str(pipeline["teacher"]),
                            "--student", str(other_tok_model_dir), "--out", str(out)])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "tokenizer" in r.output, r.output
    assert not out.exists() and not (tmp_path / "train.partial").exists()


def test_cli_help_and_print_config():
    r = runner.invoke(app, ["train", "--help"])
    assert r.exit_code == 0
    for opt in ("--plan", "--loss", "--steps", "--batch-size", "--seq-len", "--lr", "--mixture", "--seed", "--save-every",
                "--resume", "--teacher-mode"):
        assert opt in r.output, opt
    r = runner.invoke(app, ["train", "--plan", "p", "--teacher", "t", "--student", "s", "--out", "o", "--loss", "jsd",
                            "--set", "jsd_beta=0.3", "--print-config"])
    assert r.exit_code == 0 and 'loss = "jsd"' in r.output and "jsd_beta = 0.3" in r.output
    r = runner.invoke(app, ["train", "--plan", "p", "--teacher", "t", "--student", "s", "--out", "o", "--loss", "kl"])
    assert r.exit_code == 2 and "loss must be one of" in r.output


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _args(cfg: TrainConfig) -> list[str]:
    return ["train", "--plan", cfg.plan, "--teacher", cfg.teacher, "--student", cfg.student, "--out", cfg.out,
            "--batch-size", str(cfg.batch_size), "--seq-len", str(cfg.seq_len), "--lr", str(cfg.lr), "--steps", str(cfg.steps),
            "--save-every", str(cfg.save_every), "--set", f"log_every={cfg.log_every}",
            "--set", f"eval_heldout={str(cfg.eval_heldout).lower()}", "--grad-accum", str(cfg.grad_accum),
            "--set", f"precision={cfg.precision}"]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "student" / "model.safetensors")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_killed_run_resumes_to_bitwise_identical_weights(pipeline, tmp_path, precision):
    """Bitwise within one precision: bf16 autocast too (emulated, and slower, on a CPU without native bf16)."""
    cfg = cfg_for(pipeline, tmp_path / "killed", steps=40, save_every=4, precision=precision)
    ckpts = tmp_path / "killed.partial" / "checkpoints"
    kill_when(_args(cfg), lambda: any(ckpts.glob("step-*")), env=_env(), cwd=ROOT)
    assert not (tmp_path / "killed").exists()

    with pytest.raises(Exception, match="--resume"):
        run(cfg)  # an interrupted run is not silently restarted
    run(cfg, resume=True)
    resumed = read_artifact(tmp_path / "killed", "train")
    assert resumed.manifest["figures"]["resumed_from_step"] in range(4, 40, 4)

    run(replace(cfg, out=str(tmp_path / "reference")))
    a, b = _weights(tmp_path / "killed"), _weights(tmp_path / "reference")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise on CPU
    ma, mb = metrics(tmp_path / "killed"), metrics(tmp_path / "reference")
    assert np.array_equal(ma["loss"], mb["loss"]) and np.array_equal(ma["lr"], mb["lr"])
    assert read_artifact(tmp_path / "killed", "train").table("batches.arrow").equals(
        read_artifact(tmp_path / "reference", "train").table("batches.arrow"))
    t0 = time.time()
    run(cfg)  # complete for this config: nothing to do
    assert time.time() - t0 < 30


def test_sigterm_checkpoints_after_the_step_and_resumes_bitwise(pipeline, tmp_path):
    """SIGTERM (a scheduler's pre-emption, `kill`): the step in progress ends, a checkpoint of it is written (none
    was due: save_every 0), exit 143 with one line naming --resume; resuming equals an uninterrupted run."""
    import signal

    cfg = cfg_for(pipeline, tmp_path / "stopped", steps=300, log_every=1)
    log = tmp_path / "stopped.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "distillkit.cli.main", *_args(cfg)], env={**_env(), "COLUMNS": "200"},
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and "step 3/300" not in log.read_text():
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    out = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM received: stopping after this step with a checkpoint" in out
    err = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "stopped by SIGTERM after step" in err[0] and "--resume" in err[0], out
    step = int(err[0].split("after step ")[1].split()[0])
    assert 3 <= step < 300
    ckpts = sorted(p.name for p in (tmp_path / "stopped.partial" / "checkpoints").glob("step-*"))
    assert ckpts == [f"step-{step:08d}"] and not (tmp_path / "stopped").exists()

    run(cfg, resume=True)
    assert read_artifact(tmp_path / "stopped", "train").manifest["figures"]["resumed_from_step"] == step
    run(replace(cfg, out=str(tmp_path / "reference")))
    a, b = _weights(tmp_path / "stopped"), _weights(tmp_path / "reference")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(metrics(tmp_path / "stopped")["loss"], metrics(tmp_path / "reference")["loss"])


class _Killed(BaseException):
    """Where a SIGKILL would have stopped the process."""


def test_a_kill_during_checkpoint_rotation_leaves_no_incomplete_step_dir(tmp_path, monkeypatch):
    """Rotation renames an old checkpoint aside (``.step-N.old<pid>``, one atomic rename) before deleting it: a kill
    in the middle of the delete leaves no ``step-N`` with files missing, and the next save removes what it left."""
    import shutil

    from distillkit.training import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    sd = {"w": torch.zeros(3)}
    ckpt.save_checkpoint(root, 1, sd, sd, {"step": 1}, {"step": 1})
    real_rmtree = shutil.rmtree

    def killed_midway(path, *a, **k):  # the first file goes, then the process dies
        sorted(Path(path).iterdir())[0].unlink()
        raise _Killed

    for step, existing in ((2, None), (2, "step-00000002")):  # rotating step 1 out; replacing a step-2 of an older run
        ckpt.remove_stale(root)  # what the kill left: the next save's first act (so the kill below hits the rotation)
        monkeypatch.setattr(shutil, "rmtree", killed_midway)
        with pytest.raises(_Killed):
            ckpt.save_checkpoint(root, step, sd, sd, {"step": step}, {"step": step})
        monkeypatch.setattr(shutil, "rmtree", real_rmtree)
        visible = [p for p in root.iterdir() if not p.name.startswith(".")]
        assert all(all((p / f).is_file() for f in ckpt.FILES) for p in visible), sorted(root.rglob("*"))
        assert [s for s, _ in ckpt.list_checkpoints(root)] == [2], existing
    ckpt.save_checkpoint(root, 3, sd, sd, {"step": 3}, {"step": 3})
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003"]


def test_resume_sweeps_incomplete_and_renamed_aside_checkpoints_and_the_artifact_lists_none(pipeline, tmp_path):
    """The issue's reproduction: a run stopped by SIGTERM; its checkpoint copied to ``step-00000003`` with model.pt
    deleted (what a kill during the old rmtree rotation left), and one renamed aside by a killed rotation. --resume
    deletes both (they are older than the newest complete one), and the final manifest lists only the last
    checkpoint's files."""
    import shutil
    import signal

    cfg = cfg_for(pipeline, tmp_path / "stopped", steps=300, log_every=1)
    log = tmp_path / "stopped.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "distillkit.cli.main", *_args(cfg)], env={**_env(), "COLUMNS": "200"},
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and "step 5/300" not in log.read_text():
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, log.read_text()
    ckpts = tmp_path / "stopped.partial" / "checkpoints"
    [last] = list(ckpts.glob("step-*"))
    assert int(last.name.removeprefix("step-")) >= 5
    shutil.copytree(last, ckpts / "step-00000003")
    (ckpts / "step-00000003" / "model.pt").unlink()
    shutil.copytree(last, ckpts / ".step-00000002.old999999")

    run(cfg, resume=True)
    art = read_artifact(tmp_path / "stopped", "train")
    assert {n for n in art.files() if n.startswith("checkpoints/")} == {
        f"checkpoints/step-00000300/{f}" for f in ("model.pt", "optimizer.pt", "trainer.pt", "state.json")}
    assert sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()) == ["step-00000300"]


def test_a_second_signal_stops_at_once_and_handlers_are_restored():
    """In a fresh process, as a `kill` from outside meets it: the first SIGINT is recorded and announced, the
    handlers come back after the block, and a second SIGINT goes to the previous handler (KeyboardInterrupt).
    A SIGINT the process ignores stays ignored (a job started with `&` from a non-interactive shell, as a CI
    script may start pytest, inherits SIGINT ignored: that, not timing, is why this test once failed there).
    The child sets Python's own SIGINT handler first, so the test does not depend on how pytest was started."""
    import subprocess
    import sys

    child = """
import os, signal, time
from distillkit.training import stop

def wait(until, seconds=20.0):
    end = time.monotonic() + seconds
    while not until() and time.monotonic() < end:
        time.sleep(0.01)

signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started with `&` from a script: stays ignored
with stop.graceful_stop():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    print("ignored", stop.requested() == 0 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN, flush=True)
signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever this test was started under
said = []
before = signal.getsignal(signal.SIGINT)
with stop.graceful_stop(say=said.append):
    pass
print("restored", signal.getsignal(signal.SIGINT) is before and stop.requested() == 0, flush=True)
try:
    with stop.graceful_stop(say=said.append):
        os.kill(os.getpid(), signal.SIGINT)
        wait(lambda: stop.requested())
        print("first", stop.requested() == signal.SIGINT, said, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        wait(lambda: False)
    print("no interrupt", flush=True)
except KeyboardInterrupt:
    print("interrupted", signal.getsignal(signal.SIGINT) is before and stop.requested() == 0, flush=True)
"""
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "ignored True",
        "restored True",
        "first True ['SIGINT received: stopping after this step with a checkpoint (send it again to stop at once)']",
        "interrupted True"]


def test_signal_handlers_are_left_alone_outside_the_main_thread():
    """`signal.signal` raises in other threads; there the block runs with the handlers it had (training in a
    thread still works, it just cannot be stopped gracefully)."""
    import signal
    import threading

    from distillkit.training import stop

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    seen = []

    def body():
        with stop.handling(lambda *a: None) as installed:
            seen.append((installed, {s: signal.getsignal(s) for s in before}))
        with stop.graceful_stop():
            seen.append(stop.requested())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [(False, before), 0]
    with stop.handling(lambda *a: None) as installed:
        assert installed and signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


def test_torchrun_ddp_and_fsdp2_match_single_process(pipeline, tmp_path):
    """2 processes x 2 micro-batches of 1 vs 1 process x 4 micro-batches of 1: the same global batch of 4.

    Both torchrun launches run concurrently while the single-process reference trains here.
    """
    # fp32 on every CPU: the 1e-5 tolerance is for fp32 summation order (under bf16 autocast, which `auto` picks on
    # a CPU with avx512_bf16/amx_bf16, the different reduction order moves the loss by ~4e-5)
    single = cfg_for(pipeline, tmp_path / "single", steps=8, grad_accum=4, save_every=4, precision="fp32")
    procs = {}
    for strategy in ("ddp", "fsdp2"):
        multi = replace(single, out=str(tmp_path / strategy), grad_accum=2)  # accumulation across no_sync micro-batches
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
               sys.executable, "-m", "distillkit.cli.main", *_args(multi), "--strategy", strategy]
        procs[strategy] = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run(single)
    a, wa = metrics(tmp_path / "single"), _weights(tmp_path / "single")
    ha = read_artifact(tmp_path / "single", "train").table("heldout.arrow")
    for strategy, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (strategy, err[-3000:])
        b = metrics(tmp_path / strategy)
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5, err_msg=strategy)  # stated tolerance: 1e-5 relative
        wb = _weights(tmp_path / strategy)
        # Adam amplifies the summation-order rounding ((g1+g2)+g3)+g4 vs (g1+g2)+(g3+g4) for near-zero gradients
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4, strategy
        art = read_artifact(tmp_path / strategy, "train")
        assert art.manifest["figures"]["world_size"] == 2 and art.manifest["figures"]["strategy"] == strategy
        hb = art.table("heldout.arrow")
        np.testing.assert_allclose(hb.column("kl_after").to_numpy(), ha.column("kl_after").to_numpy(), rtol=1e-4)


def test_plan_from_other_scores_is_refused(pipeline, tmp_path):
    import json
    import shutil

    from distillkit.errors import ArtifactError

    fake = tmp_path / "plan"
    shutil.copytree(pipeline["plan"], fake)
    m = read_artifact(fake, "plan").manifest
    m["inputs"][0]["manifest_sha256"] = "0" * 64
    (fake / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="is not the one this artifact was built from"):
        run(cfg_for(pipeline, tmp_path / "train", plan=str(fake)))
    assert not (tmp_path / "train").exists() and not (tmp_path / "train.partial").exists()


def test_a_plan_whose_manifest_names_a_file_outside_it_is_refused(pipeline, tmp_path):
    """train reads the plan's (and the scores') file names through the one check: exit 2, one line, nothing written."""
    import json
    import shutil

    fake = tmp_path / "plan"
    shutil.copytree(pipeline["plan"], fake)
    m = json.loads((fake / "manifest.json").read_text())
    m["files"][0]["name"] = "../" + m["files"][0]["name"]
    shutil.copyfile(fake / m["files"][0]["name"][3:], tmp_path / m["files"][0]["name"][3:])  # the file it now points at
    (fake / "manifest.json").write_text(json.dumps(m))
    cfg = cfg_for(pipeline, tmp_path / "train", plan=str(fake), steps=2)
    r = runner.invoke(app, _args(cfg))
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1, r.output
    assert repr(m["files"][0]["name"]) in errors[0] and "outside the artifact" in errors[0] and "--overwrite" in errors[0]
    assert not (tmp_path / "train").exists() and not (tmp_path / "train.partial").exists()


# --------------------------------------------------------------------------- TrainState: the checkpoint's trainer state


def _state():
    from distillkit.losses import TaidSchedule
    from distillkit.training.ddk import DomainMixer
    from distillkit.training.sampler import CurriculumSampler
    from distillkit.training.state import TrainState

    mixer = DomainMixer.create("ddk", ["a", "b"], [0.5, 0.5], [10.0, 20.0], [30.0, 40.0], interval=2, alpha=0.5, smoothing=True)
    sampler = CurriculumSampler([0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 1], mixer.weights, seed=3)
    return TrainState(sampler=sampler, mixer=mixer, taid=TaidSchedule())


def test_train_state_saves_every_field_and_resumes_in_place(tmp_path):
    from dataclasses import fields

    from distillkit.training.state import TrainState

    a = _state()
    a.sampler.set_stage(1)
    a.drawn = [a.sampler.next_batch(2) for _ in range(3)]
    a.sampler.set_weights(a.mixer.update(2, [35.0, 38.0]))
    a.taid.update(2.0, 0, 10)
    a.taid.update(1.5, 1, 10)
    a.step, a.metrics, a.before, a.resumed_from = 3, [{"step": 3, "loss": 1.25}], {"student_ppl": [1.5, 2.5]}, 1
    saved = a.state_dict()
    assert set(saved) == {f.name for f in fields(TrainState)} - {"resumed_from"}  # everything but the transient field
    torch.save(saved, tmp_path / "trainer.pt")
    rand, nxt = torch.rand(4), a.sampler.next_batch(2)  # what the run does after the checkpoint

    b = _state()
    sampler, mixer, taid = b.sampler, b.mixer, b.taid
    b.load_state_dict(torch.load(tmp_path / "trainer.pt", weights_only=True))
    assert b.sampler is sampler and b.mixer is mixer and b.taid is taid  # components restored in place
    assert torch.equal(torch.rand(4), rand) and np.array_equal(b.sampler.next_batch(2), nxt)  # RNG and sampler continue
    assert b.step == 3 and b.metrics == a.metrics and b.before == a.before and b.resumed_from is None
    assert len(b.drawn) == 3 and all(np.array_equal(x, y) for x, y in zip(b.drawn, a.drawn))
    assert b.mixer.history == a.mixer.history and b.taid.state_dict() == a.taid.state_dict()

    legacy = {k: v for k, v in saved.items() if k != "before"} | {"stage": 1, "extra": {"before": a.before}}
    c = _state()
    c.load_state_dict(legacy)  # a trainer.pt written before TrainState
    assert c.before == a.before


def test_train_state_refuses_a_stateful_field_it_would_lose_and_a_foreign_checkpoint():
    from dataclasses import dataclass, field

    from distillkit.errors import ArtifactError
    from distillkit.training.state import GlobalRNG, TrainState

    @dataclass
    class Extended(TrainState):
        note: str = "saved like any plain field"
        unmarked: object = field(default_factory=GlobalRNG)

    s = _state()
    with pytest.raises(TypeError, match="component()"):
        Extended(sampler=s.sampler, mixer=s.mixer).state_dict()
    assert Extended(sampler=s.sampler, mixer=s.mixer, unmarked=None).state_dict()["note"] == "saved like any plain field"

    saved = s.state_dict()
    with pytest.raises(ArtifactError, match=r"lacks \['metrics'\].*--overwrite"):
        _state().load_state_dict({k: v for k, v in saved.items() if k != "metrics"})
    no_taid = _state()
    no_taid.taid = None
    with pytest.raises(ArtifactError, match="has taid state.*--overwrite"):
        no_taid.load_state_dict(saved)


def test_precision_auto_follows_the_hardware(monkeypatch):
    import distillkit.models as M
    from distillkit.training.setup import precision_choice

    monkeypatch.setattr(M, "_cpu_has_fast_bf16", lambda: True)  # a CPU with avx512_bf16 / amx_bf16
    dtype, why = precision_choice("auto", "cpu")
    assert dtype is torch.bfloat16 and "native bf16" in why
    monkeypatch.setattr(M, "_cpu_has_fast_bf16", lambda: False)  # AVX2 only: emulated bf16 is slower
    dtype, why = precision_choice("auto", "cpu")
    assert dtype is None and "no native bf16" in why
    assert precision_choice("bf16", "cpu")[0] is torch.bfloat16 and precision_choice("fp32", "cpu")[0] is None


def test_bf16_step_close_to_fp32_and_recorded(pipeline, tmp_path):
    """One run per precision from the same start: bf16 autocast's losses stay within 2 % of fp32's over 3 steps."""
    kw = dict(steps=3, teacher_mode="offline", eval_heldout=False, mixture="static")
    run(cfg_for(pipeline, tmp_path / "fp32", precision="fp32", **kw))
    run(cfg_for(pipeline, tmp_path / "bf16", precision="bf16", **kw))
    a, b = metrics(tmp_path / "fp32"), metrics(tmp_path / "bf16")
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-2)
    assert not np.array_equal(a["loss"], b["loss"])  # the bf16 run really computed in bf16
    figs = {p: read_artifact(tmp_path / p, "train").manifest["figures"] for p in ("fp32", "bf16")}
    assert figs["fp32"]["precision"] == "fp32" and figs["bf16"]["precision"] == "bf16"
    assert "precision = bf16" in figs["bf16"]["precision_reason"]


def test_resume_keeps_the_interrupted_runs_precision(tmp_path, monkeypatch):
    """A run started where auto chose bf16 and resumed on a CPU without native bf16 stays in bf16 (and the reverse)."""
    import json
    from types import SimpleNamespace

    import distillkit.models as M
    from distillkit.pipelines.train import make_settings

    cfg = TrainConfig(plan="p", teacher="t", student="s", out=str(tmp_path / "out"))
    inputs = SimpleNamespace(schedule=SimpleNamespace(restart_optimizer=False))
    dist = SimpleNamespace(world_size=1, device="cpu", is_main=True)
    partial = tmp_path / "out.partial"
    partial.mkdir()
    monkeypatch.setattr(M, "_cpu_has_fast_bf16", lambda: True)
    first = make_settings(cfg, inputs, dist, partial)
    assert first.autocast is torch.bfloat16
    assert json.loads((partial / "precision.json").read_text())["precision"] == "bf16"
    monkeypatch.setattr(M, "_cpu_has_fast_bf16", lambda: False)  # the resuming machine has AVX2 only
    again = make_settings(cfg, inputs, dist, partial, resumed=True)
    assert again.autocast is torch.bfloat16 and "kept from the interrupted run" in again.precision
    (tmp_path / "other.partial").mkdir()
    fresh = make_settings(cfg, inputs, dist, tmp_path / "other.partial")  # a new run decides afresh
    assert fresh.autocast is None
