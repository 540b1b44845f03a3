"""`distillkit study`: recipe checks, the statistics against hand computations, and a 2-arm x 2-seed study end to end
on tiny models (runs, skip on re-run, resume after a kill, result files picked up without the run directories)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillkit.cli.main import app
from tests.conftest import make_texts, write_jsonl

runner = CliRunner()


# ---------------------------------------------------------------- statistics, by hand

def test_mean_ci_known_answer():
    from distillkit.stats import mean_ci

    e = mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, s = sqrt(5/3) = 1.290994, t_0.975(3) = 3.182446, half = 3.182446 * 1.290994 / 2 = 2.054260
    assert e.mean == pytest.approx(2.5) and e.sd == pytest.approx(1.2909944, rel=1e-6)
    assert e.half == pytest.approx(2.054260, rel=1e-5) and e.lo == pytest.approx(0.445740, rel=1e-5)
    one = mean_ci([7.0])
    assert one.mean == 7.0 and math.isnan(one.lo) and one.n == 1


def test_t_test_power_known_answers():
    from distillkit.stats import Estimate, detectable, t_test_power

    # pwr.t.test(n = 10, d = 1, sig.level = 0.05, type = "one.sample") in R's pwr package: power = 0.8030969
    assert t_test_power(1.0, 10) == pytest.approx(0.8030969, abs=1e-6)
    assert t_test_power(0.0, 10) == pytest.approx(0.05, abs=1e-9)  # no effect: the test's size
    # the detectable effect is where the power is 0.8, in units of the differences' sd
    e = detectable(Estimate(0.0, 0.0, 0.0, 10, 2.0))
    assert t_test_power(e / 2.0, 10) == pytest.approx(0.8, abs=1e-8) and e == pytest.approx(2 * 0.996001, rel=1e-5)


def test_paired_difference_detectable_and_verdict_known_answer():
    from distillkit.stats import detectable, paired, verdict

    d = paired({0: 5.0, 1: 7.0, 2: 6.0, 9: 100.0}, {0: 4.0, 1: 5.0, 2: 5.0})  # seed 9 has no baseline: left out
    # d = [1, 2, 1]: mean 4/3, s = 0.577350, t_0.975(2) = 4.302653 -> half = 4.302653 * 0.577350 / sqrt(3) = 1.434218
    assert d.n == 3 and d.mean == pytest.approx(4 / 3) and d.half == pytest.approx(1.434218, rel=1e-5)
    assert verdict(d, higher_is_better=True) == "no difference detected"  # lo = -0.1009 < 0
    # detectable: the noncentral-t solution for n = 3 is 3.264044 standard deviations of d (the shortcut
    # (t_0.975(2) + t_0.8(2)) / sqrt(3) = 3.0965 is too small), so 3.264044 * 0.577350 = 1.884496
    assert detectable(d) == pytest.approx(1.884496, rel=1e-5)
    better = paired({0: 3.0, 1: 3.1, 2: 2.9}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert verdict(better, True) == "better" and verdict(better, False) == "worse"
    assert verdict(paired({0: 1.0}, {0: 0.0}), True) == "too few runs"


def test_summary_from_result_files_matches_hand_computation(tmp_path):
    from distillkit.study import METRICS, summarize

    rouge = METRICS[0]
    res = {}
    for seed, (b, a) in enumerate([(0.20, 0.23), (0.22, 0.24), (0.21, 0.25)]):
        res[("base", seed)] = {"metrics": {"rouge_l": b}, "per_prompt": {"rouge_l": {"p1": b, "p2": b + 0.1}}}
        res[("pocl", seed)] = {"metrics": {"rouge_l": a}, "per_prompt": {"rouge_l": {"p1": a, "p2": a}}}
    s = {x.arm: x for x in summarize(res, ["base", "pocl"], "base", rouge)}
    assert s["base"].estimate.mean == pytest.approx(21.0) and s["base"].paired is None
    # per-seed differences in points: 3, 2, 4 -> mean 3, s = 1, half = 4.302653 / sqrt(3) = 2.484138
    p = s["pocl"].paired
    assert p.mean == pytest.approx(3.0) and p.half == pytest.approx(2.484138, rel=1e-5)
    assert s["pocl"].verdict == "better"
    # per prompt, averaged over seeds: p1 3.0, p2 (24 - 31) = -7.0 -> mean -2
    assert s["pocl"].paired_prompts.mean == pytest.approx(-2.0) and s["pocl"].paired_prompts.n == 2


def test_report_compares_the_recipe_pairs_by_hand(tmp_path):
    """compare = [["b-pocl", "b"]]: the report pairs b-pocl with b (not with the baseline), seed by seed."""
    from distillkit.study import read_study
    from distillkit.study_report import write_report

    rec_path = _recipe(tmp_path / "s.toml", 'scores = "x"\nbaseline = "a"\ncompare = [["b-pocl", "b"], ["b", "a"]]\n'
                       "[budget]\nepochs = 1\n[arms.a]\n[arms.b]\ntrain = { loss = 'tvd' }\n"
                       "[arms.b-pocl]\nplan = { stages = 2 }\ntrain = { loss = 'tvd' }\n")
    rec = read_study(rec_path, out=str(tmp_path / "runs"), results=str(tmp_path / "res"))
    assert rec.compare == (("b-pocl", "b"),)  # [b, a] is the baseline comparison the report makes anyway
    res = {}
    for seed, (a, b, bp) in enumerate([(0.20, 0.10, 0.15), (0.20, 0.12, 0.14), (0.20, 0.11, 0.16)]):
        for arm, v in (("a", a), ("b", b), ("b-pocl", bp)):
            res[(arm, seed)] = {"metrics": {"rouge_l": v}, "per_prompt": {"rouge_l": {"p1": v, "p2": v}}}
    rec.results.mkdir(parents=True)
    text = write_report(rec, res, None, {}, plots=False).read_text()
    # b-pocl - b per seed: 5, 2, 5 points -> mean 4, s = sqrt(3) = 1.732051, half = 4.302653 * 1.732051 / sqrt(3) = 4.302653
    row = next(line for line in text.splitlines() if "b-pocl − b" in line)
    assert "4.00 [-0.30, 8.30]" in row and "no difference detected" in row, row


def test_kl_is_not_compared_across_teacher_signals(tmp_path):
    """An online arm's held-out KL (full teacher distribution) against an offline baseline's (stored top-k): no
    Δ, no verdict, a line saying why; between two online arms (the recipe's compare) the Δ is computed."""
    from distillkit.study import read_study
    from distillkit.study_report import write_report

    online = "train = { teacher_mode = 'online', loss = 'jsd' }"
    rec_path = _recipe(tmp_path / "s.toml", 'scores = "x"\nbaseline = "a"\ncompare = [["g-pocl", "g"]]\n'
                       "[budget]\nepochs = 1\n[train]\nteacher_mode = 'offline'\n[arms.a]\n"
                       f"[arms.g]\n{online}\n[arms.g-pocl]\nplan = {{ stages = 2 }}\n{online}\n")
    rec = read_study(rec_path, out=str(tmp_path / "runs"), results=str(tmp_path / "res"))
    res = {}
    for seed in range(3):
        for arm, kl in (("a", 0.70), ("g", 0.20 + 0.01 * seed), ("g-pocl", 0.10 + 0.02 * seed)):
            res[(arm, seed)] = {"metrics": {"kl": kl, "ppl": 5.0 + seed + (arm == "g")}}
    rec.results.mkdir(parents=True)
    text = write_report(rec, res, None, {}, plots=False).read_text()
    kl_table = text.split("## held-out KL")[1].split("## ")[0]
    g_row = next(line for line in kl_table.splitlines() if line.startswith("| g |"))
    assert "not comparable" in g_row and "better" not in g_row, g_row
    assert "Not compared with a: g, g-pocl." in kl_table
    ppl_row = next(line for line in text.split("## held-out perplexity")[1].splitlines() if line.startswith("| g |"))
    assert "1.00 [1.00, 1.00]" in ppl_row and "worse" in ppl_row, ppl_row  # perplexity compares across teacher signals
    kl_pair = next(line for line in text.splitlines() if "g-pocl − g" in line and "KL" in line)
    # per seed: -0.10, -0.09, -0.08 -> mean -0.09
    assert "-0.0900 [" in kl_pair and "better" in kl_pair, kl_pair


@pytest.mark.parametrize("compare, message", [
    ('[["pocl", "nope"]]', "compare names 'nope', not an arm"),
    ('[["pocl", "pocl"]]', "compare pairs 'pocl' with itself"),
    ('["pocl"]', "compare must be a list of [arm, reference] pairs"),
])
def test_bad_compare_exit_2(tmp_path, study_scores, compare, message):
    body = BASE.format(out=tmp_path / "runs", scores=study_scores).replace('baseline = "flat"', f'baseline = "flat"\ncompare = {compare}')
    r = runner.invoke(app, ["study", str(_recipe(tmp_path / "s.toml", body))])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


# ---------------------------------------------------------------- recipes that are refused (exit 2, one line)

def _recipe(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


BASE = """
out = "{out}"
scores = "{scores}"
seeds = [0, 1]
baseline = "flat"
[budget]
epochs = 2
[arms.flat]
plan = {{ curriculum = false }}
[arms.pocl]
plan = {{ stages = 2 }}
"""


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("plan = { stages = 2 }", "plan = { stagez = 2 }"), "unknown key 'stagez'"),
    (lambda s: s.replace("plan = { stages = 2 }", "plan = { curriculum = false }"), "are identical"),
    (lambda s: s.replace("plan = { stages = 2 }", "plan = { stages = 2 }\ntrain = { steps = 9 }"), "sets train key(s) steps"),
    (lambda s: s.replace("[budget]\nepochs = 2", "[budget]\nepochs = 2\nsteps = 4"), "exactly one of epochs"),
    (lambda s: s.replace('baseline = "flat"', 'baseline = "nope"'), "baseline 'nope' is not an arm"),
    (lambda s: s + "\n[arms.odd]\nbudget = 3\n", "arms.odd has unknown key(s) budget"),
])
def test_bad_recipes_exit_2_with_one_line(tmp_path, study_scores, edit, message):
    body = edit(BASE.format(out=tmp_path / "runs", scores=study_scores))
    r = runner.invoke(app, ["study", str(_recipe(tmp_path / "s.toml", body))])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "runs").exists()  # nothing written


def test_score_without_topk_refused_for_offline_arm(tmp_path, study_scores_plain):
    body = BASE.format(out=tmp_path / "runs", scores=study_scores_plain) + '[train]\nteacher_mode = "offline"\n'
    r = runner.invoke(app, ["study", str(_recipe(tmp_path / "s.toml", body))])
    assert r.exit_code == 2 and "stores no teacher top-k" in r.output, r.output


def test_rouge_on_plain_text_scores_refused(tmp_path, text_scores):
    body = BASE.format(out=tmp_path / "runs", scores=text_scores) + '[eval]\nrouge = "on"\n'
    r = runner.invoke(app, ["study", str(_recipe(tmp_path / "s.toml", body))])
    assert r.exit_code == 2 and "needs prompt/response data" in r.output, r.output


def test_an_arm_trains_from_its_own_scores_of_the_same_data(tmp_path, study_scores, study_scores_plain):
    """Per-arm scores: the arm's plan (and offline teacher) read them; the other arms' run fingerprints are those
    of the recipe without them; the evaluation stays on the study's scores."""
    from distillkit.pipelines.study import prepare
    from distillkit.study import read_study

    plain = BASE.format(out=tmp_path / "runs", scores=study_scores)
    own = plain.replace("plan = { stages = 2 }", f'scores = "{study_scores_plain}"\nplan = {{ stages = 2 }}')
    assert own != plain
    a, b = (prepare(read_study(_recipe(tmp_path / n, body))) for n, body in (("a.toml", plain), ("b.toml", own)))
    assert Path(b.plans["pocl"].scores) == study_scores_plain and Path(b.plans["flat"].scores) == study_scores
    fa, fb = ({j.id: j.fingerprint for j in x.jobs} for x in (a, b))
    assert fa["flat-s0"] == fb["flat-s0"] and fa["pocl-s0"] != fb["pocl-s0"]
    assert all(Path(j.eval.data) == study_scores for j in b.jobs)
    # the arm's scores hold no top-k: an offline arm is refused, naming them
    r = runner.invoke(app, ["study", str(_recipe(tmp_path / "c.toml", own + '[train]\nteacher_mode = "offline"\n'))])
    assert r.exit_code == 2 and f"{study_scores_plain} stores no teacher top-k" in r.output, r.output


def test_an_arm_with_scores_of_other_data_is_refused(tmp_path, study_scores, text_scores):
    body = BASE.format(out=tmp_path / "runs", scores=study_scores).replace(
        "plan = { stages = 2 }", f'scores = "{text_scores}"\nplan = {{ stages = 2 }}')
    r = runner.invoke(app, ["study", str(_recipe(tmp_path / "s.toml", body))])
    assert r.exit_code == 2, r.output
    differing = r.output.split("differ from the study's")[1].split(":")[0]  # "... in key, key, ..."
    assert "data_fingerprint" in differing and "top_k" not in differing
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- a whole study on tiny models

def _instruction_rows(n: int) -> list[dict]:
    prompts, responses = make_texts(n, seed=21, max_words=10), make_texts(n, seed=22, max_words=8)
    return [{"prompt": p, "response": r, "domain": "qa" if i % 2 else "chat"} for i, (p, r) in enumerate(zip(prompts, responses))]


def _score(tmp, teacher, student, rows, top_k: int) -> Path:
    from distillkit.pipelines.score import ScoreConfig, run

    data = write_jsonl(tmp / "data.jsonl", rows)
    out = tmp / "score"
    run(ScoreConfig(data=str(data), teacher=str(teacher), student=str(student), out=str(out), dtype="float32",
                    max_length=48, gen_max_new_tokens=6, top_k=top_k))
    return out


@pytest.fixture(scope="module")
def study_scores(tmp_path_factory, tiny_teacher_dir, tiny_student_dir) -> Path:
    return _score(tmp_path_factory.mktemp("sscore"), tiny_teacher_dir, tiny_student_dir, _instruction_rows(40), top_k=8)


@pytest.fixture(scope="module")
def study_scores_plain(tmp_path_factory, tiny_teacher_dir, tiny_student_dir) -> Path:
    return _score(tmp_path_factory.mktemp("sscore0"), tiny_teacher_dir, tiny_student_dir, _instruction_rows(40), top_k=0)


@pytest.fixture(scope="module")
def text_scores(tmp_path_factory, tiny_teacher_dir, tiny_student_dir) -> Path:
    rows = [{"text": t, "domain": "a" if i % 2 else "b"} for i, t in enumerate(make_texts(30, seed=3))]
    return _score(tmp_path_factory.mktemp("tscore"), tiny_teacher_dir, tiny_student_dir, rows, top_k=0)


STUDY = BASE + """
[train]
teacher_mode = "offline"
batch_size = 4
seq_len = 48
lr = 1e-3
mixture = "uniform"
save_every = 2
teacher_dtype = "float32"
precision = "fp32"
[eval]
gen_seeds = [10, 20]
gen_max_new_tokens = 4
max_length = 48
dtype = "float32"
tasks = "none"
"""


def _files(results: Path) -> set[str]:
    return {p.name for p in results.glob("*.json")}


def test_study_end_to_end_skip_resume_and_pickup(tmp_path, study_scores, monkeypatch):
    import distillkit.pipelines.eval as ev

    out, results = tmp_path / "runs", tmp_path / "results"
    recipe = _recipe(tmp_path / "study.toml", STUDY.format(out=out, scores=study_scores))

    # 0. --status before anything ran: every run pending, nothing written
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--status"])
    assert r.exit_code == 0 and r.output.strip().splitlines()[-1] == "5 runs: 5 pending", r.output
    assert not results.exists() and not out.exists()

    # 1. killed during the 3rd evaluation (flat-s0, pocl-s0, then flat-s1): two result files survive, flat-s1's train is done
    real, calls = ev.run, {"n": 0}

    def dying(cfg, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(cfg, **kw)

    monkeypatch.setattr(ev, "run", dying)
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--threads", "1"])
    assert r.exit_code == 130, r.output
    assert _files(results) >= {"flat-s0.json", "pocl-s0.json"} and "flat-s1.json" not in _files(results)
    assert not list((out / "locks").glob("*.lock"))  # released on the way out
    train_manifest = out / "runs" / "flat-s1" / "train" / "manifest.json"
    assert train_manifest.is_file()
    before = train_manifest.stat().st_mtime_ns
    flat_result = (results / "flat-s0.json").read_text()
    monkeypatch.setattr(ev, "run", real)
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--status"])
    states = {line.split()[0]: line.split(None, 2)[1:] for line in r.output.strip().splitlines()[:-1]}
    assert states["flat-s0"][0] == "done" and states["pocl-s0"][0] == "done", r.output
    assert states["flat-s1"] == ["pending", "trained; evaluation to do"], r.output
    assert r.output.strip().splitlines()[-1] == "5 runs: 2 done, 3 pending", r.output

    # 2. rerun: finished runs skipped, flat-s1 evaluated from its finished train, the rest run
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert _files(results) >= {"reference.json", "flat-s0.json", "flat-s1.json", "pocl-s0.json", "pocl-s1.json"}
    assert train_manifest.stat().st_mtime_ns == before and (results / "flat-s0.json").read_text() == flat_result
    assert "3 run(s) to do, 2 finished" in r.output

    # the result files hold what the artifacts say
    res = json.loads((results / "pocl-s1.json").read_text())
    assert res["arm"] == "pocl" and res["seed"] == 1 and 0 <= res["metrics"]["rouge_l"] <= 1
    assert set(res["per_seed"]["rouge_l"]) == {"10", "20"}
    per_prompt = res["per_prompt"]["rouge_l"]
    assert res["metrics"]["rouge_l"] == pytest.approx(sum(per_prompt.values()) / len(per_prompt), abs=1e-6)
    assert res["train"]["stages"] and len(res["train"]["stages"]) == 2 and res["machine"]["cpu"] is not None
    budgets = json.loads((results / "budgets.json").read_text())
    # flat: 2 epochs over 36 training samples; pocl: 2 stages of 2*2/3 epochs over 18 and 36 -> 36 passes of 36
    assert budgets["flat"]["sample_passes"] == pytest.approx(2.0, abs=0.25)
    assert budgets["pocl"]["sample_passes"] == pytest.approx(2.0, abs=0.25)

    report = (results / "report.md").read_text()
    assert "ROUGE-L" in report and "Δ vs baseline" in report and "pocl" in report and (results / "study.png").is_file()
    from distillkit.stats import paired
    from distillkit.study import load_results

    got = load_results(results)
    d = paired({s: got[("pocl", s)]["metrics"]["rouge_l"] * 100 for s in (0, 1)},
               {s: got[("flat", s)]["metrics"]["rouge_l"] * 100 for s in (0, 1)})
    from distillkit.study_report import _fine

    f = _fine("{:.2f}", d.mean, d.hi - d.lo)  # two decimals, more where the CI is narrower than that shows
    assert f"{f.format(d.mean)} [{f.format(d.lo)}, {f.format(d.hi)}]" in report

    # 3. a third run does nothing
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--threads", "1"])
    assert r.exit_code == 0 and "0 run(s) to do" in r.output, r.output

    # 4. the result files alone (run directories gone, as on another machine) are enough to skip every run
    shutil.rmtree(out / "runs")
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--threads", "1"])
    assert r.exit_code == 0 and "0 run(s) to do" in r.output, r.output
    assert not (out / "runs").exists()

    # 5. a changed shared setting is refused: its results would not compare
    changed = _recipe(tmp_path / "changed.toml", STUDY.format(out=out, scores=study_scores).replace("epochs = 2", "epochs = 3"))
    r = runner.invoke(app, ["study", str(changed), "--results", str(results)])
    assert r.exit_code == 2 and "another budget" in r.output, r.output


def test_status_of_a_run_in_training_and_of_an_interrupted_one(tmp_path, study_scores):
    """A live worker's lock + a checkpoint + its log line: 'training' with the logged step; the lock gone:
    'interrupted', resuming from the checkpoint."""
    from distillkit.locks import claim, release
    from distillkit.pipelines.study import prepare, run_states
    from distillkit.study import read_study

    out, results = tmp_path / "runs", tmp_path / "results"
    recipe = _recipe(tmp_path / "study.toml", STUDY.format(out=out, scores=study_scores))
    sp = prepare(read_study(recipe, None, str(results)))
    job = next(j for j in sp.jobs if j.id == "pocl-s0")
    ckpt = Path(job.train.out + ".partial") / "checkpoints" / "step-00000004"
    ckpt.mkdir(parents=True)
    for f in ("model.pt", "optimizer.pt", "trainer.pt"):
        (ckpt / f).write_bytes(b"")
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "worker-1.log").write_text("── study run pocl-s0 (0 of 5 finished)\n"
                                               "step 5/9  loss 1.0  KD 1.0  CE 1.0  lr 1.00e-03  eta 0:00:07\n")
    lock = out / "locks" / "pocl-s0.lock"
    assert claim(lock)
    try:
        got = {s.id: s for s in run_states(sp)}
        assert got["pocl-s0"].state == "training"
        assert got["pocl-s0"].detail.startswith("step 5/9, eta 0:00:07, checkpoint step 4 of ?; worker pid "), got["pocl-s0"]
    finally:
        release(lock)
    got = {s.id: s for s in run_states(sp)}
    assert (got["pocl-s0"].state, got["pocl-s0"].detail) == ("interrupted", "training: checkpoint step 4 of ? (resumes there)")
    assert got["flat-s0"].state == "pending"


def test_stale_lock_of_a_killed_worker_is_taken_over(tmp_path):
    from distillkit.locks import claim, release

    lock = tmp_path / "x.lock"
    import socket

    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # no such process
    assert claim(lock)
    mine = json.loads(lock.read_text())
    assert mine["pid"] != 2**22 + 12345
    lock2 = tmp_path / "z.lock"
    import os

    lock2.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # alive: not taken
    assert not claim(lock2)
    release(lock)
    assert not lock.exists()


def test_two_workers_share_the_queue(tmp_path, study_scores):
    """--jobs 2: two worker processes (logs in {out}/logs) take runs through lock files; every run is done once."""
    out, results = tmp_path / "runs", tmp_path / "results"
    recipe = _recipe(tmp_path / "study.toml", STUDY.format(out=out, scores=study_scores))
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--jobs", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert _files(results) >= {"reference.json", "flat-s0.json", "flat-s1.json", "pocl-s0.json", "pocl-s1.json"}
    logs = {p.name: p.read_text() for p in (out / "logs").glob("worker-*.log")}
    assert set(logs) == {"worker-0.log", "worker-1.log"}
    done = [line for text in logs.values() for line in text.splitlines() if line.startswith("study run ") and " done in " in line]
    assert sorted(x.split()[2] for x in done) == sorted(["flat-s0", "flat-s1", "pocl-s0", "pocl-s1", "reference"])
    assert (results / "report.md").is_file() and not list((out / "locks").glob("*.lock"))


def test_the_parent_passes_sigterm_to_its_workers_once():
    """`kill <study pid>`: every live worker gets the signal (their training checkpoints and stops), and the
    parent's own handlers come back afterwards."""
    import os
    import signal
    import subprocess
    import sys

    from distillkit.pipelines.study import _forward_signals

    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    procs = [(subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True), None) for _ in range(2)]
    for p, _ in procs:
        assert p.stdout.readline().strip() == "ready"
    before = signal.getsignal(signal.SIGTERM)
    with _forward_signals(procs) as received:
        os.kill(os.getpid(), signal.SIGTERM)
        codes = [p.wait(timeout=30) for p, _ in procs]
    assert received == [signal.SIGTERM] and codes == [7, 7]
    assert signal.getsignal(signal.SIGTERM) is before
    for p, _ in procs:
        p.stdout.close()


def test_report_shows_small_paired_differences_with_enough_decimals():
    from distillkit.study_report import _fine

    assert _fine("{:.2f}", 0.014, 0.002) == "{:.4f}"  # a 0.014 ppl difference is not printed as 0.01 [0.01, 0.01]
    assert _fine("{:.2f}", -2.26, 2.3) == "{:.2f}"  # wide enough already
    assert _fine("{:.1f}", 0.0, None, float("nan")) == "{:.1f}"  # nothing to refine
    assert _fine("{:.2f}", 1e-12) == "{:.6f}"  # capped


PRE = STUDY.replace("seeds = [0, 1]", "seeds = [0]") + """
[arms.sft]
plan = {{ curriculum = false }}
train = {{ teacher_mode = "none" }}
[precondition]
arm = "sft"
margin = {margin}
"""


def test_precondition_runs_first_and_a_failing_one_stops_every_other_arm(tmp_path, study_scores):
    """[precondition]: the reference (teacher) and the SFT arm run first; a teacher not ahead by the margin stops the
    study (exit 1, one line) before any other arm trains, with precondition.json and the report's table written."""
    out, results = tmp_path / "runs", tmp_path / "results"
    recipe = _recipe(tmp_path / "fail.toml", PRE.format(out=out, scores=study_scores, margin=1.0))  # ROUGE-L <= 1: cannot hold
    r = runner.invoke(app, ["study", str(recipe), "--results", str(results), "--threads", "1"])
    assert r.exit_code == 1 and "precondition failed" in r.output and "no other arm runs" in r.output, r.output
    assert _files(results) >= {"reference.json", "sft-s0.json", "precondition.json"}
    assert not (results / "flat-s0.json").exists() and not (out / "runs" / "flat-s0").exists()
    pre = json.loads((results / "precondition.json").read_text())
    ref = json.loads((results / "reference.json").read_text())
    teacher = next(m for m in ref["models"].values() if m["role"] == "teacher")["metrics"]["rouge_l"]
    sft = json.loads((results / "sft-s0.json").read_text())["metrics"]["rouge_l"]
    assert pre["passed"] is False and pre["gap"] == pytest.approx(teacher - sft) and pre["margin"] == 1.0
    assert "## Precondition: is the teacher ahead?" in (results / "report.md").read_text()
    sft_train = json.loads((out / "runs" / "sft-s0" / "train" / "manifest.json").read_text())
    assert sft_train["train"]["objective"] == "sft"

    # a margin the teacher meets: the same runs are reused and every other arm runs after them
    ok = _recipe(tmp_path / "ok.toml", PRE.format(out=out, scores=study_scores, margin=-1.0))
    r = runner.invoke(app, ["study", str(ok), "--results", str(tmp_path / "results2"), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / "results2") >= {"reference.json", "sft-s0.json", "flat-s0.json", "pocl-s0.json", "precondition.json"}
    assert json.loads((tmp_path / "results2" / "precondition.json").read_text())["passed"] is True


def test_precondition_needs_a_known_arm_and_the_references(tmp_path, study_scores):
    body = PRE.format(out=tmp_path / "runs", scores=study_scores, margin=0.03)
    r = runner.invoke(app, ["study", str(_recipe(tmp_path / "a.toml", body.replace('arm = "sft"', 'arm = "sfx"')))])
    assert r.exit_code == 2 and "[precondition] arm 'sfx' is not an arm" in r.output, r.output
    r = runner.invoke(app, ["study", str(_recipe(tmp_path / "b.toml", body.replace('tasks = "none"', 'tasks = "none"\nreferences = false')))])
    assert r.exit_code == 2 and "needs the reference evaluation" in r.output, r.output
