"""`distillkit plan` on synthetic score artifacts (built with ArtifactWriter: fast and exact)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from distillkit.cli.main import app
from distillkit.artifacts import ArtifactWriter, read_artifact
from distillkit.curriculum import rrf_difficulty, schedule
from distillkit.difficulty import rrf_difficulty as reference_rrf_difficulty
from distillkit.domains import domain_table
from distillkit.pipelines.plan import PlanConfig, run
from distillkit.schemas import CURRICULUM_COLUMNS

runner = CliRunner()

SAMPLE_TYPES = {
    "sample_id": pa.string(), "domain": pa.string(), "split": pa.string(), "num_tokens": pa.int32(),
    "teacher_nll": pa.float32(), "student_nll": pa.float32(), "student_ce": pa.float32(), "nll_gap": pa.float32(),
    "ppl_ratio": pa.float32(), "difficulty": pa.float32(), "rouge_l": pa.float32(),
}


def samples_table(rows: list[dict]) -> pa.Table:
    """Score rows from (sample_id, domain, split, teacher_nll, student_nll[, rouge_l][, num_tokens])."""
    cols: dict[str, list] = {k: [] for k in SAMPLE_TYPES}
    with_rouge = "rouge_l" in rows[0]
    for r in rows:
        t, s = r["teacher_nll"], r["student_nll"]
        vals = {**r, "num_tokens": r.get("num_tokens", 10), "student_ce": s, "nll_gap": s - t, "ppl_ratio": math.exp(s - t),
                "difficulty": s}
        for k in cols:
            cols[k].append(vals.get(k))
    if not with_rouge:
        cols.pop("rouge_l")
    return pa.table({k: pa.array(v, SAMPLE_TYPES[k]) for k, v in cols.items()})


def write_scores(out: Path, samples: pa.Table, domains: pa.Table | None = None, kind: str = "score", **extra) -> Path:
    w = ArtifactWriter(out, kind, {"synthetic": True, "rows": samples.num_rows})
    w.write("samples.arrow", samples)
    w.write("domains.arrow", domains if domains is not None else domain_table(samples))
    w.finish({"samples": samples.num_rows}, extra={"shard": [0, 1], "format": "text", **extra})
    return out


def random_rows(sizes: dict[str, int], seed: int = 0, n_val: int = 2, rouge: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for d, n in sizes.items():
        for i in range(n + n_val):
            t = float(rng.uniform(1, 3))
            r = {"sample_id": f"{d}-{i:04d}", "domain": d, "split": "validation" if i < n_val else "train",
                 "teacher_nll": t, "student_nll": t + float(rng.uniform(0, 2)), "num_tokens": int(rng.integers(5, 50))}
            if rouge:
                r["rouge_l"] = float(rng.choice([0.0, 0.25, 0.5, 1.0]))  # many ties
            rows.append(r)
    return rows


def plan(scores: Path, out: Path, **kw) -> Path:
    return run(PlanConfig(scores=str(scores), out=str(out), **kw)).path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def scores(tmp_path) -> Path:
    return write_scores(tmp_path / "score", samples_table(random_rows({"code": 10, "math": 7, "web": 2})))


# ---------------------------------------------------------------- measures


def test_rrf_ranks_hand_computed(tmp_path):
    # rouge (higher = easier) and student CE (lower = easier); c/d tie on rouge, broken by id
    data = {"a": (0.9, 2.0), "b": (0.2, 1.0), "c": (0.5, 3.0), "d": (0.5, 0.5)}
    rows = [{"sample_id": k, "domain": "qa", "split": "train", "teacher_nll": 0.1, "student_nll": ce, "rouge_l": rg}
            for k, (rg, ce) in data.items()]
    rows.append({"sample_id": "v", "domain": "qa", "split": "validation", "teacher_nll": 0.1, "student_nll": 1.0, "rouge_l": 0.0})
    out = plan(write_scores(tmp_path / "s", samples_table(rows)), tmp_path / "p", stages=2)
    art = read_artifact(out, "plan")
    assert art.manifest["plan"]["measure"] == "rrf"  # auto: the scores have ROUGE-L
    cur = art.table("curriculum.arrow", CURRICULUM_COLUMNS)
    # rank_rouge: a=1, c=2, d=3, b=4 ; rank_ce: d=1, b=2, a=3, c=4
    s = {"a": 1 / 61 + 1 / 63, "b": 1 / 64 + 1 / 62, "c": 1 / 62 + 1 / 64, "d": 1 / 63 + 1 / 61}
    # a and d tie (so do b and c): ties go to the smaller id -> a, d, b, c
    assert cur.column("sample_id").to_pylist() == ["a", "d", "b", "c"]
    assert cur.column("rank").to_pylist() == [0, 1, 2, 3]
    assert cur.column("stage").to_pylist() == [0, 0, 1, 1]
    expect = [np.float32(1 - s[k] * 61 / 2) for k in "adbc"]
    assert cur.column("difficulty").to_pylist() == expect
    assert "v" not in cur.column("sample_id").to_pylist()  # validation rows are held out


def test_rrf_matches_difficulty_module_with_ties():
    from distillkit.curriculum import id_keys

    rng = np.random.default_rng(3)
    ids = [f"id{i:03d}" for i in rng.permutation(300)]
    rouge = rng.choice([0.0, 0.5, 1.0], 300)
    ce = rng.choice([1.0, 2.0, 3.0, 4.0], 300)
    ours = rrf_difficulty(rouge, ce, id_keys(pa.array(ids)))
    np.testing.assert_allclose(ours.astype(np.float32), reference_rrf_difficulty(rouge, ce, ids), rtol=0, atol=0)


@pytest.mark.parametrize("measure,column", [("student_ce", "student_ce"), ("ppl_ratio", "ppl_ratio"), ("nll_gap", "nll_gap")])
def test_simple_measures_use_their_column(tmp_path, scores, measure, column):
    art = read_artifact(plan(scores, tmp_path / "p", measure=measure, curriculum=False), "plan")
    cur = art.table("curriculum.arrow")
    src = read_artifact(scores, "score").table("samples.arrow").to_pandas().set_index("sample_id")
    got = cur.to_pandas().set_index("sample_id")
    np.testing.assert_array_equal(got.difficulty.to_numpy(), src.loc[got.index, column].to_numpy())
    assert (np.diff(got.difficulty.to_numpy()) >= 0).all()  # one stage: rank is plain easy -> hard
    assert art.manifest["plan"]["measure"] == measure


# ---------------------------------------------------------------- stages


def test_stage_pools_are_cumulative_stratified_and_cover_everything(tmp_path, scores):
    art = read_artifact(plan(scores, tmp_path / "p"), "plan")
    cur = art.table("curriculum.arrow", CURRICULUM_COLUMNS).to_pandas()
    src = read_artifact(scores, "score").table("samples.arrow").to_pandas()
    train_ids = set(src[src.split == "train"].sample_id)
    assert len(cur) == len(train_ids) == 19 and set(cur.sample_id) == train_ids  # every train sample exactly once
    assert cur["rank"].tolist() == list(range(19))
    assert (np.diff(cur.stage) >= 0).all()  # pool of stage s = ranks [0, n_s) = rows with stage <= s
    S = 4
    expect_new = {d: [math.ceil((s + 1) * n / S) - math.ceil(s * n / S) for s in range(S)] for d, n in {"code": 10, "math": 7, "web": 2}.items()}
    assert expect_new["web"] == [1, 0, 1, 0]
    stages = art.manifest["plan"]["stages"]
    pools_before: set[str] = set()
    for s in range(S):
        pool = cur[cur.stage <= s]
        assert set(pool.domain) == {"code", "math", "web"}  # no domain starved, from stage 0 on
        for d, new in expect_new.items():
            assert (cur[(cur.stage == s)].domain == d).sum() == new[s]
            assert stages[s]["domains"][d] == sum(new[: s + 1])
        assert pools_before <= set(pool.sample_id)  # cumulative
        pools_before = set(pool.sample_id)
        assert stages[s]["num_samples"] == len(pool)
        assert stages[s]["num_tokens"] == int(pool.num_tokens.sum())
    # within a domain, an earlier stage only holds easier (or equal) samples
    for d, g in cur.groupby("domain"):
        for s in range(S - 1):
            early, late = g[g.stage <= s].difficulty, g[g.stage > s].difficulty
            if len(early) and len(late):
                assert early.max() <= late.min(), d
    assert stages[-1]["num_samples"] == 19


def test_no_curriculum_is_one_stage_with_all_data(tmp_path, scores):
    art = read_artifact(plan(scores, tmp_path / "p", curriculum=False, stages=6), "plan")
    p = art.manifest["plan"]
    assert p["num_stages"] == 1 and p["curriculum"] is False
    assert set(art.table("curriculum.arrow").column("stage").to_pylist()) == {0}
    assert p["stages"] == [{"stage": 0, "fraction": 1.0, "temperature": 1.0, "kd_weight": 0.7, "num_samples": 19, "num_new": 19,
                            "num_tokens": p["stages"][0]["num_tokens"], "domains": {"code": 10, "math": 7, "web": 2}}]


def test_schedule_values_at_each_stage(tmp_path, scores):
    sch = schedule(4)
    assert [x.fraction for x in sch] == [0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose([x.temperature for x in sch], [1.0, 4 / 3, 5 / 3, 2.0])
    np.testing.assert_allclose([x.kd_weight for x in sch], [0.7, 0.8, 0.9, 1.0])
    assert [(x.temperature, x.kd_weight) for x in schedule(1)] == [(1.0, 0.7)]
    np.testing.assert_allclose([x.temperature for x in schedule(3, 0.5, 1.5)], [0.5, 1.0, 1.5])

    art = read_artifact(plan(scores, tmp_path / "p", stages=3, temperature_end=3.0, kd_weight_start=0.5,
                             stage_length=250, stage_unit="steps", restart_optimizer=True), "plan")
    p = art.manifest["plan"]
    assert [s["stage"] for s in p["stages"]] == [0, 1, 2]
    np.testing.assert_allclose([s["fraction"] for s in p["stages"]], [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose([s["temperature"] for s in p["stages"]], [1.0, 2.0, 3.0])
    np.testing.assert_allclose([s["kd_weight"] for s in p["stages"]], [0.5, 0.75, 1.0])
    assert p["stage_length"] == {"unit": "steps", "value": 250} and p["restart_optimizer"] is True
    default = read_artifact(plan(scores, tmp_path / "q"), "plan").manifest["plan"]
    assert default["stage_length"] == {"unit": "epochs", "value": 1.0} and default["restart_optimizer"] is False


# ---------------------------------------------------------------- mixture + contract


def test_ddk_mixture_equals_softmax_of_ratio_and_contract(tmp_path):
    samples = samples_table(random_rows({"a": 4, "b": 3, "c": 5}, n_val=1))
    domains = domain_table(samples)
    # hand-set perplexities: ratios 2, 3, 1
    domains = domains.set_column(domains.schema.get_field_index("student_ppl"), "student_ppl", pa.array([4.0, 6.0, 3.0]))
    domains = domains.set_column(domains.schema.get_field_index("teacher_ppl"), "teacher_ppl", pa.array([2.0, 2.0, 3.0]))
    scores = write_scores(tmp_path / "s", samples, domains)
    out = plan(scores, tmp_path / "p", plot=True)
    art = read_artifact(out, "plan")
    mix = art.table("mixture.arrow")
    for name, typ in {"domain": pa.string(), "weight": pa.float64(), "teacher_ppl": pa.float64(), "student_ppl": pa.float64(),
                      "ppl_ratio": pa.float64(), "num_samples": pa.int64(), "num_tokens": pa.int64()}.items():
        assert mix.schema.field(name).type == typ, name
    assert mix.column("domain").to_pylist() == ["a", "b", "c"]
    np.testing.assert_allclose(mix.column("weight").to_numpy(), [0.24472847, 0.66524096, 0.09003057], rtol=1e-7)
    assert sum(mix.column("weight").to_pylist()) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(mix.column("ppl_ratio").to_numpy(), [2.0, 3.0, 1.0])
    assert mix.column("num_samples").to_pylist() == [4, 3, 5]

    m = art.manifest
    p = m["plan"]
    assert {"measure", "num_stages", "stage_length", "restart_optimizer", "stages", "mixture", "scores",
            "scores_manifest_sha256"} <= set(p)
    assert p["mixture"] == {"kind": "ddk", "alpha": 0.5, "interval": 1000, "smoothing": True}
    assert p["validation_samples"] == {"a": 1, "b": 1, "c": 1}
    assert p["scores_manifest_sha256"] == read_artifact(scores, "score").sha256
    assert [(i["kind"], i["manifest_sha256"]) for i in m["inputs"]] == [("score", p["scores_manifest_sha256"])]
    assert sorted(f["name"] for f in m["files"]) == ["curriculum.arrow", "mixture.arrow", "plan.png"]
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for kind, expect in (("uniform", [1 / 3] * 3), ("proportional", None)):
        mx = read_artifact(plan(scores, tmp_path / kind, mixture=kind, ddk_smoothing=False), "plan").table("mixture.arrow")
        tokens = mx.column("num_tokens").to_numpy()
        np.testing.assert_allclose(mx.column("weight").to_numpy(), expect or tokens / tokens.sum())


def test_deterministic_arrow_bytes_and_idempotent_rerun(tmp_path):
    rows = random_rows({"x": 50, "y": 30, "z": 9}, seed=5, rouge=True)
    a = plan(write_scores(tmp_path / "s1", samples_table(rows)), tmp_path / "p1", plot=True)
    b = plan(write_scores(tmp_path / "s2", samples_table(rows)), tmp_path / "p2", plot=True)
    # row order of the scores does not matter either: ordering is by difficulty, then sample id
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    c = plan(write_scores(tmp_path / "s3", samples_table(shuffled)), tmp_path / "p3", plot=True)
    for name in ("curriculum.arrow", "mixture.arrow"):
        assert (a / name).read_bytes() == (b / name).read_bytes() == (c / name).read_bytes(), name
    before = (a / "manifest.json").read_bytes()
    plan(tmp_path / "s1", a, plot=True)  # same config and scores: nothing to do
    assert (a / "manifest.json").read_bytes() == before


# ---------------------------------------------------------------- CLI


def test_cli_plan_prints_summary(tmp_path, scores):
    r = invoke("plan", "--scores", scores, "--out", tmp_path / "p", "--stages", "2", "--measure", "nll_gap", "--mixture", "ddk")
    assert r.exit_code == 0, r.output
    for needle in ("nll_gap", "temperature", "ddk", "code", "math", "web", "ppl S", "S/T", "weight", "wrote"):
        assert needle in r.output, needle
    r = invoke("plan", "--scores", scores, "--out", tmp_path / "p", "--stages", "2", "--measure", "nll_gap")
    assert r.exit_code == 0 and "nothing to do" in r.output
    r = invoke("plan", "--scores", scores, "--out", "o", "--set", "ddk_alpha=0.25", "--stage-unit", "steps",
               "--stage-length", "100", "--no-curriculum", "--print-config")
    assert r.exit_code == 0 and "ddk_alpha = 0.25" in r.output and "curriculum = false" in r.output and 'stage_unit = "steps"' in r.output


def test_bad_inputs_exit_2_with_one_line(tmp_path, scores):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "samples.arrow").write_bytes(b"")
    other = write_scores(tmp_path / "trainart", samples_table(random_rows({"a": 3})), kind="train")
    shard = write_scores(tmp_path / "shard", samples_table(random_rows({"a": 3})), shard=[1, 4])
    out = tmp_path / "p"
    cases = {
        "no scores": (["--scores", tmp_path / "nope"], "does not exist"),
        "incomplete": (["--scores", incomplete], "incomplete"),
        "wrong kind": (["--scores", other], "expected a score artifact"),
        "a shard": (["--scores", shard], "--merge"),
        "unknown measure": (["--scores", scores, "--measure", "entropy"], "measure must be one of"),
        "kl": (["--scores", scores, "--measure", "kl"], "nll_gap"),
        "rrf without rouge": (["--scores", scores, "--measure", "rrf"], "rouge_l"),
        "S < 1": (["--scores", scores, "--stages", "0"], "stages must be >= 1"),
        "steps without length": (["--scores", scores, "--stage-unit", "steps"], "stage_length is required"),
        "unknown mixture": (["--scores", scores, "--mixture", "zipf"], "mixture must be one of"),
        "out is scores": (["--scores", scores, "--out", scores], "must differ"),
        "no --scores": ([], "scores is required"),
    }
    for name, (args, needle) in cases.items():
        args = args if "--out" in args else [*args, "--out", out]
        r = invoke("plan", *args)
        assert r.exit_code == 2, (name, r.output)
        lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, r.output)
        assert needle.lower() in lines[0].lower(), (name, lines[0])
        assert not out.exists() and not out.with_name("p.partial").exists(), name
    assert read_artifact(scores, "score")  # the scores survived "--out SCORES"
