"""The CLI: exit codes, one-line messages, nothing damaged, and kill-and-resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillkit.cli.main import app
from distillkit.artifacts import read_artifact
from tests.conftest import build_model, kill_when, make_texts, write_jsonl

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _score_args(data, teacher, student, out, *extra):
    return ["score", "--data", data, "--teacher", teacher, "--student", student, "--out", out, "--dtype", "float32", *extra]


@pytest.fixture
def finished(tmp_path, text_jsonl, tiny_teacher_dir, tiny_student_dir):
    """A complete score artifact whose bytes must survive every bad invocation."""
    out = tmp_path / "score"
    r = _invoke(*_score_args(text_jsonl, tiny_teacher_dir, tiny_student_dir, out))
    assert r.exit_code == 0, r.output
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return out, snapshot


def test_version_and_help():
    r = _invoke("--version")
    assert r.exit_code == 0 and r.output.startswith("distillkit 0.")
    r = _invoke("score", "--help")
    assert r.exit_code == 0 and "--top-k" in r.output and "--shard" in r.output


def _bad_cases(tmp_path, text_jsonl, teacher, student, other):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nocol = write_jsonl(tmp_path / "nocol.jsonl", [{"body": t} for t in make_texts(5)])
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "readme.txt").write_text("hi")
    return {
        "missing file": (tmp_path / "nope.jsonl", teacher, student, [], "does not exist"),
        "empty dataset": (empty, teacher, student, [], "empty"),
        "missing text column": (nocol, teacher, student, [], "--text-field"),
        "unknown domain field": (text_jsonl, teacher, student, ["--domain-field", "topic"], "topic"),
        "tokenizer mismatch": (text_jsonl, teacher, other, [], "tokenizer"),
        "not a model": (text_jsonl, notmodel, student, [], "not a model"),
    }


def test_bad_inputs_exit_2_one_line_and_damage_nothing(tmp_path, finished, text_jsonl, tiny_teacher_dir,
                                                       tiny_student_dir, other_tok_model_dir):
    out, snapshot = finished
    cases = _bad_cases(tmp_path, text_jsonl, tiny_teacher_dir, tiny_student_dir, other_tok_model_dir)
    for name, (data, teacher, student, extra, needle) in cases.items():
        r = _invoke(*_score_args(data, teacher, student, out, "--overwrite", *extra))
        assert r.exit_code == 2, (name, r.output)
        lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, r.output)
        assert needle.lower() in lines[0].lower(), (name, lines[0])
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot, name
        assert not out.with_name(out.name + ".partial").exists(), name


def test_config_errors_exit_2(tmp_path, text_jsonl, tiny_teacher_dir, tiny_student_dir):
    r = _invoke(*_score_args(text_jsonl, tiny_teacher_dir, tiny_student_dir, tmp_path / "o", "--set", "topk=3"))
    assert r.exit_code == 2 and "did you mean top_k" in r.output
    r = _invoke(*_score_args(text_jsonl, tiny_teacher_dir, tiny_student_dir, tmp_path / "o", "--shard", "2/2"))
    assert r.exit_code == 2 and "--shard" in r.output
    r = _invoke("score", "--data", text_jsonl)
    assert r.exit_code == 2 and "teacher is required" in r.output


def test_print_config_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[score]\ndata = "a.jsonl"\nteacher = "t"\nstudent = "s"\nout = "o"\ntop_k = 4\nmax_length = 64\n')
    r = _invoke("score", "--config", cfg, "--set", "top_k=8", "--set", "max_length=32", "--max-length", "16", "--print-config")
    assert r.exit_code == 0, r.output
    assert "top_k = 8" in r.output and "max_length = 16" in r.output and 'data = "a.jsonl"' in r.output


def test_inspect(finished):
    out, _ = finished
    r = _invoke("inspect", out)
    assert r.exit_code == 0, r.output
    assert "score artifact" in r.output and "samples.arrow" in r.output and "domains.arrow" in r.output
    r = _invoke("inspect", out.parent / "nothing")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_kill_and_resume_gives_same_rows(tmp_path, tiny_tok_dir, tiny_student_dir):
    teacher = build_model(tmp_path / "slow_teacher", tiny_tok_dir, layers=4, hidden=192, seed=7)
    rows = [{"text": t, "domain": f"d{i % 3}"} for i, t in enumerate(make_texts(120, seed=9, min_words=60, max_words=90))]
    data = write_jsonl(tmp_path / "big.jsonl", rows)
    args = _score_args(data, teacher, tiny_student_dir, tmp_path / "killed", "--set", "chunk_size=6", "--top-k", "3")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    chunks = tmp_path / "killed.partial" / "chunks"
    kill_when(args, lambda: chunks.is_dir() and len(list(chunks.glob("part-*.arrow"))) >= 3, env=env, timeout=240)
    done_before = len(list(chunks.glob("part-*.arrow")))
    assert 3 <= done_before < 20
    assert not (tmp_path / "killed").exists()

    r = _invoke(*args)  # without --resume: refused, partial kept
    assert r.exit_code == 2 and "--resume" in r.output
    r = _invoke(*args, "--resume")
    assert r.exit_code == 0, r.output
    killed = read_artifact(tmp_path / "killed", "score")
    assert killed.manifest["figures"]["chunks_resumed"] == done_before

    ref_args = _score_args(data, teacher, tiny_student_dir, tmp_path / "ref", "--set", "chunk_size=6", "--top-k", "3")
    assert _invoke(*ref_args).exit_code == 0
    ref = read_artifact(tmp_path / "ref", "score")
    assert killed.table("samples.arrow").equals(ref.table("samples.arrow"))
    assert killed.files("topk/") == ref.files("topk/")
    for f in ref.files("topk/"):
        assert killed.table(f).equals(ref.table(f))


@pytest.mark.parametrize("columns,width", [(None, 160), ("100", 100)])
def test_log_output_is_not_wrapped_at_80_columns(columns, width):
    """Written to a log (stderr not a terminal), rich would wrap at 80 columns and break step lines and tables
    mid-row: logs get progress.LOG_WIDTH, and COLUMNS wins when set."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | ({"COLUMNS": columns} if columns else {})
    r = subprocess.run([sys.executable, "-c", "from distillkit.progress import console; print(console.width)"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and int(r.stdout) == width, r.stderr


def _error_line(r) -> str:
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[0]


def test_score_into_a_symlinked_out_fills_the_target_and_keeps_the_link(tmp_path, text_jsonl, tiny_teacher_dir,
                                                                          tiny_student_dir):
    """``ln -s BIGDISK/T L; distillkit score ... --out L``: the artifact is written in T (its ``.partial`` too), L stays
    the link, and no ``.L.old<pid>`` / ``.tmp`` / ``.partial`` is left beside either, also after --overwrite."""
    big = tmp_path / "bigdisk"
    (big / "T").mkdir(parents=True)
    link = tmp_path / "L"
    link.symlink_to(big / "T")
    beside = sorted(p.name for p in tmp_path.iterdir())
    for extra in ([], ["--overwrite"]):  # the first run, then the swap of a finished artifact for a new one
        r = _invoke(*_score_args(text_jsonl, tiny_teacher_dir, tiny_student_dir, link, "--max-length", "32", *extra))
        assert r.exit_code == 0, r.output
        assert link.is_symlink() and (big / "T" / "manifest.json").is_file() and read_artifact(link, "score")
        assert sorted(p.name for p in tmp_path.iterdir()) == beside and [p.name for p in big.iterdir()] == ["T"], extra


def test_manifest_names_outside_the_artifact_are_refused_by_merge_inspect_and_plan(tmp_path, text_jsonl, tiny_teacher_dir,
                                                                                    tiny_student_dir):
    """A shard whose manifest lists ``topk/../../../secret.txt``: ``score --merge`` copies nothing (exit 2, one line
    naming the name and the fix), and ``inspect`` and ``plan`` refuse the artifact the same way."""
    import hashlib
    import json

    shards = []
    for i in range(2):
        shards.append(tmp_path / "a" / "b" / f"shard{i}")
        r = _invoke(*_score_args(text_jsonl, tiny_teacher_dir, tiny_student_dir, shards[-1], "--max-length", "32",
                                 "--top-k", "2", "--shard", f"{i}/2"))
        assert r.exit_code == 0, r.output
    secret = tmp_path / "a" / "secret.txt"  # shard0/topk/../../../secret.txt
    secret.write_text("not part of any artifact")
    bad = "topk/../../../secret.txt"
    mpath = shards[0] / "manifest.json"
    m = json.loads(mpath.read_text())
    m["files"].append({"name": bad, "rows": None, "bytes": secret.stat().st_size,
                       "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()})
    mpath.write_text(json.dumps(m))
    merged = tmp_path / "merged"
    runs = {"merge": ["score", "--merge", shards[0], "--merge", shards[1], "--out", merged],
            "inspect": ["inspect", shards[0]], "plan": ["plan", "--scores", shards[0], "--out", tmp_path / "plan"]}
    for what, args in runs.items():
        r = _invoke(*args)
        assert r.exit_code == 2, (what, r.output)
        line = _error_line(r)
        assert repr(bad) in line and "outside the artifact" in line and "--overwrite" in line, (what, line)
    assert not merged.exists() and not (tmp_path / "merged.partial").exists() and not (tmp_path / "plan").exists()
    assert [p.name for p in tmp_path.rglob("secret*")] == ["secret.txt"]


def test_top_k_above_the_vocabulary_is_refused_before_the_models_load(tmp_path, monkeypatch, text_jsonl, tiny_teacher_dir,
                                                                       tiny_student_dir):
    """--top-k larger than the teacher's vocabulary (vocab_size in its config.json, at most the tokenizer's size): exit 2
    with one line naming --top-k and the size, before any model loads; nothing written, so no --overwrite is needed."""
    import json

    import transformers

    vocab = json.loads((tiny_teacher_dir / "config.json").read_text())["vocab_size"]

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before --top-k was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    out = tmp_path / "score"
    r = _invoke(*_score_args(text_jsonl, tiny_teacher_dir, tiny_student_dir, out, "--top-k", str(vocab + 1)))
    assert r.exit_code == 2, r.output
    line = _error_line(r)
    assert f"--top-k {vocab + 1}" in line and str(vocab) in line and "config.json" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no out, no .partial, no lock
    monkeypatch.undo()
    r = _invoke(*_score_args(text_jsonl, tiny_teacher_dir, tiny_student_dir, out, "--top-k", str(vocab), "--max-length", "16"))
    assert r.exit_code == 0, r.output  # the whole vocabulary is a valid top-k; no --overwrite needed
