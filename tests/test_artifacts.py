from __future__ import annotations


import pandas as pd
import pyarrow as pa
import pytest

from distillkit.artifacts import ArtifactWriter, check_input, partial_dir, read_artifact
from distillkit.errors import ArtifactError, OutputExists


def _table(n=5):
    return pa.table({"sample_id": [f"s{i}" for i in range(n)], "value": pa.array(range(n), pa.int64())})


def _write(out, config=None, **kw):
    w = ArtifactWriter(out, "demo", config or {"a": 1}, **kw)
    if not w.done:
        w.write("samples.arrow", _table())
        w.write("sub/part-00000.arrow", _table(3))
        w.finish({"throughput": 1.0})
    return w


def test_partial_dir_is_where_the_writer_works(tmp_path):
    out = tmp_path / "runs" / "art"
    assert partial_dir(out) == partial_dir(str(out)) == tmp_path / "runs" / "art.partial"
    out.parent.mkdir()
    assert ArtifactWriter(out, "demo", {"a": 1}).partial == partial_dir(out)


def test_round_trip_and_manifest(tmp_path):
    out = tmp_path / "art"
    _write(out)
    assert not (tmp_path / "art.partial").exists()
    art = read_artifact(out, "demo")
    m = art.manifest
    for key in ("kind", "schema_version", "distillkit_version", "git_commit", "created_at", "config", "config_sha256",
                "inputs", "files", "libraries", "figures"):
        assert key in m
    assert {f["name"]: f["rows"] for f in m["files"]} == {"samples.arrow": 5, "sub/part-00000.arrow": 3}
    assert art.table("samples.arrow", {"sample_id": pa.string(), "value": pa.int64()}).equals(_table())
    # readable without distillkit
    assert pd.read_feather(out / "samples.arrow")["value"].tolist() == [0, 1, 2, 3, 4]


def test_rerun_same_config_is_noop_and_other_config_refused(tmp_path):
    out = tmp_path / "art"
    _write(out)
    before = (out / "manifest.json").read_bytes()
    assert _write(out).done
    assert (out / "manifest.json").read_bytes() == before
    with pytest.raises(OutputExists, match="--overwrite"):
        _write(out, {"a": 2})
    assert (out / "manifest.json").read_bytes() == before  # nothing damaged
    _write(out, {"a": 2}, overwrite=True)
    assert read_artifact(out).config == {"a": 2}


def test_refuses_manifestless(tmp_path):
    out = tmp_path / "art"
    _write(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="incomplete: no manifest.json"):
        read_artifact(out)


def test_refuses_wrong_kind(tmp_path):
    _write(tmp_path / "art")
    with pytest.raises(ArtifactError, match="is a demo artifact, expected a score artifact"):
        read_artifact(tmp_path / "art", "score")


def test_refuses_truncated(tmp_path):
    out = tmp_path / "art"
    _write(out)
    data = (out / "samples.arrow").read_bytes()
    (out / "samples.arrow").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        read_artifact(out)


def test_refuses_tampered(tmp_path):
    out = tmp_path / "art"
    _write(out)
    other = tmp_path / "other"
    w = ArtifactWriter(other, "demo", {"b": 1})
    t = _table()
    t = t.set_column(1, "value", pa.array([9, 9, 9, 9, 9], pa.int64()))
    w.write("samples.arrow", t)
    w.finish()
    # same size, different content
    (out / "samples.arrow").write_bytes((other / "samples.arrow").read_bytes())
    art = read_artifact(out)
    with pytest.raises(ArtifactError, match="modified after it was written"):
        art.table("samples.arrow")


def test_refuses_missing_column(tmp_path):
    _write(tmp_path / "art")
    with pytest.raises(ArtifactError, match="missing column 'difficulty'"):
        read_artifact(tmp_path / "art").table("samples.arrow", {"difficulty": pa.float32()})


def test_partial_needs_resume(tmp_path):
    out = tmp_path / "art"
    w = ArtifactWriter(out, "demo", {"a": 1})
    w.write("chunks/part-00000.arrow", _table())
    # simulated crash: no finish
    with pytest.raises(OutputExists, match="--resume"):
        ArtifactWriter(out, "demo", {"a": 1})
    with pytest.raises(OutputExists, match="another config"):
        ArtifactWriter(out, "demo", {"a": 2}, resume=True)
    w2 = ArtifactWriter(out, "demo", {"a": 1}, resume=True)
    assert w2.resumed and w2.has("chunks/part-00000.arrow")
    with pytest.raises(ArtifactError, match="interrupted run"):
        read_artifact(out)


def test_check_input_names_both_hashes(tmp_path):
    a = tmp_path / "a"
    _write(a)
    b = tmp_path / "b"
    _write(b, {"a": 3})
    art_a, art_b = read_artifact(a), read_artifact(b)
    w = ArtifactWriter(tmp_path / "c", "plan", {}, inputs=[art_a])
    w.finish()
    recorded = read_artifact(tmp_path / "c").manifest["inputs"]
    check_input(art_a, recorded, "scores")
    with pytest.raises(ArtifactError, match=art_b.sha256[:12]):
        check_input(art_b, recorded, "scores")


def test_non_artifact_out_refused(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExists, match="not a distillkit artifact"):
        _write(out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_finish_never_lists_files_of_hidden_directories(tmp_path):
    """A hidden directory in the partial (a temp or renamed-aside copy, e.g. a checkpoint being deleted) is no part
    of the artifact: none of its files is listed, and a renamed-aside (``.NAME.old<pid>``) one is deleted."""
    out = tmp_path / "art"
    w = ArtifactWriter(out, "demo", {"a": 1})
    w.write("samples.arrow", _table())
    for hidden in ("checkpoints/.step-00000002.old4242", ".cache"):
        (w.path(hidden)).mkdir(parents=True)
        (w.path(hidden) / "model.pt").write_bytes(b"left by a killed run")
    w.finish()
    assert [f["name"] for f in read_artifact(out, "demo").manifest["files"]] == ["samples.arrow"]
    assert not (out / "checkpoints" / ".step-00000002.old4242").exists()


def _siblings(*dirs):
    return {d: sorted(p.name for p in d.iterdir()) for d in dirs}


@pytest.mark.parametrize("how", ["existing target, relative link", "dangling link", "link to a link"])
def test_a_symlinked_out_is_written_through_and_stays_a_link(tmp_path, how):
    """``ln -s BIGDISK/T L; ... --out L``: the work (``.partial``, lock) and the result land in T, L stays the link,
    and no ``.old`` / ``.tmp`` / ``.partial`` sibling survives a finished run, a re-run or an --overwrite."""
    import os

    big, runs = tmp_path / "bigdisk", tmp_path / "runs"
    big.mkdir()
    runs.mkdir()
    target, link = big / "T", runs / "L"
    if how == "existing target, relative link":
        target.mkdir()
        link.symlink_to(os.path.relpath(target, runs))
    elif how == "dangling link":
        link.symlink_to(target)
    else:
        (big / "hop").symlink_to(target)
        link.symlink_to(big / "hop")
    w = ArtifactWriter(link, "demo", {"a": 1})
    assert w.partial == partial_dir(link) == big / "T.partial"
    w.write("samples.arrow", _table())
    w.finish()
    expected = {runs: ["L"], big: ["T"] if how != "link to a link" else ["T", "hop"]}
    assert link.is_symlink() and (target / "manifest.json").is_file() and _siblings(runs, big) == expected
    assert read_artifact(link, "demo").table("samples.arrow").equals(_table())
    assert _write(link).done and _siblings(runs, big) == expected  # same config: nothing to do
    _write(link, {"a": 2}, overwrite=True)  # the swap of a finished artifact for a new one
    assert link.is_symlink() and read_artifact(link, "demo").config == {"a": 2} and _siblings(runs, big) == expected


@pytest.mark.parametrize("name", ["topk/../../../secret.txt", "../secret.txt", "/ABS/secret.txt", "sub/../../secret.txt",
                                  "link/secret.txt", "", None])
def test_manifest_file_names_outside_the_artifact_are_refused(tmp_path, name):
    """Every reader of a manifest's file names (read_artifact, Artifact.table / file, the writer's reuse check) goes
    through one check: no absolute path, no '..', nothing that resolves outside the artifact (a symlink)."""
    import hashlib
    import json

    out = tmp_path / "a" / "b" / "art"
    out.parent.mkdir(parents=True)
    _write(out)
    (out / "topk").mkdir()
    for where in (tmp_path / "a", tmp_path / "a" / "b"):  # where each name leads
        (where / "secret.txt").write_text("not yours")
    secret = tmp_path / "a" / "secret.txt"
    (out / "link").symlink_to(secret.parent)
    if name is not None:
        name = name.replace("/ABS", str(tmp_path / "a"))
    m = json.loads((out / "manifest.json").read_text())
    m["files"].append({"name": name, "rows": None, "bytes": secret.stat().st_size,
                       "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()})
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError) as e:
        read_artifact(out, "demo")
    msg = str(e.value)
    assert repr(name) in msg and "outside" in msg and "--overwrite" in msg and "\n" not in msg, msg
    with pytest.raises(ArtifactError, match="outside"):  # the writer's check of a complete artifact it would reuse
        _write(out)
    from distillkit.artifacts import Artifact

    art = Artifact(out, m)  # a reader handed a manifest directly
    for read in (lambda: art.table(name), lambda: art.file(name)):
        with pytest.raises(ArtifactError, match="outside"):
            read()


def test_a_partial_left_empty_by_a_failure_before_any_write_is_not_another_config(tmp_path):
    """A run that failed before it wrote anything (a full disk at its first write) leaves an empty `.partial`: the
    fix the error named (`--resume`), and a plain rerun, work; a `.partial` holding work of another config is
    still refused."""
    out = tmp_path / "art"
    partial_dir(out).mkdir()
    (partial_dir(out) / ".run.json.tmp123").write_text("{", encoding="utf-8")  # a write the full disk cut short
    w = ArtifactWriter(out, "demo", {"a": 1}, resume=True)
    assert not w.resumed and (partial_dir(out) / "run.json").is_file()
    w.close()
    partial_dir(out).joinpath("run.json").unlink()
    partial_dir(out).joinpath("part.arrow").write_bytes(b"work")  # real work, no config: unknown, refused
    with pytest.raises(OutputExists, match="another config"):
        ArtifactWriter(out, "demo", {"a": 1})
