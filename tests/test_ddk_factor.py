"""DDK's discrepancy factor for large gaps (issue 14): the log-ratio variant beside the paper's Eq. 1/2.

Variant: weights ``r_i ∝ ratio_i^(1/τ)`` (= softmax(log(ratio)/τ)), update ``ψ_i = r_t[i]·ratio_i^(1/τ)``,
``r_{t+1} = α·ψ/Σψ + (1 − α)/N``; ratio = ppl_S / ppl_T. Numbers below are computed by hand.
"""

from __future__ import annotations

import json
import math
import typing
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from distillkit.artifacts import read_artifact
from distillkit.choices import DdkFactor
from distillkit.domains import domain_table
from distillkit.errors import ConfigError, DataError
from distillkit.mixture import (
    ddk_update,
    ddk_weights,
    discrepancy_update,
    discrepancy_weights,
    log_ratio_update,
    log_ratio_weights,
    mixture_weights,
)
from distillkit.pipelines.plan import PlanConfig, mixture_formula, run
from distillkit.records import MixtureSettings, PlanRecord
from distillkit.training.ddk import DomainMixer
from tests.test_plan import invoke, random_rows, samples_table, write_scores
from tests.test_train import cfg_for

# three domains: ppl_S / ppl_T = [4/2, 6/2, 3/3] = [2, 3, 1] (as in test_mixture)
PPL_S = [4.0, 6.0, 3.0]
PPL_T = [2.0, 2.0, 3.0]
R_T = [0.5, 0.3, 0.2]


# ---------------------------------------------------------------- the variant's weights


def test_log_ratio_weights_near_one_hand_computed():
    # ratios [1, 2]: τ = 1 -> ∝ [1, 2]; τ = 0.5 -> ∝ [1, 4]; τ = 2 -> ∝ [1, √2] = [√2 − 1, 2 − √2]
    np.testing.assert_allclose(log_ratio_weights([1.0, 2.0], [1.0, 1.0]), [1 / 3, 2 / 3], rtol=1e-14)
    np.testing.assert_allclose(log_ratio_weights([1.0, 2.0], [1.0, 1.0], tau=0.5), [1 / 5, 4 / 5], rtol=1e-14)
    np.testing.assert_allclose(log_ratio_weights([1.0, 2.0], [1.0, 1.0], tau=2.0), [math.sqrt(2) - 1, 2 - math.sqrt(2)], rtol=1e-14)
    # the paper's range, ratios [1.2, 1.5, 1.8] (perplexities 12, 15, 18 over 10): / 4.5 = [4/15, 1/3, 2/5],
    # a milder contrast (1.5x) than Eq. 1's softmax (e^0.6 = 1.82x)
    w = log_ratio_weights([12.0, 15.0, 18.0], [10.0] * 3)
    np.testing.assert_allclose(w, [4 / 15, 1 / 3, 2 / 5], rtol=1e-14)
    assert w.dtype == np.float64 and w.sum() == pytest.approx(1.0, abs=1e-15)
    eq1 = ddk_weights([12.0, 15.0, 18.0], [10.0] * 3)
    assert eq1[2] / eq1[0] == pytest.approx(math.exp(0.6), rel=1e-12) and w[2] / w[0] == pytest.approx(1.5, rel=1e-12)
    # equal ratios -> uniform, whatever the absolute perplexities
    np.testing.assert_allclose(log_ratio_weights([10.0, 2.0], [5.0, 1.0], tau=0.3), [0.5, 0.5])


def test_log_ratio_weights_large_gap_hand_computed():
    # ratios [4, 6, 9, 19] (a freshly pruned student): / 38 = [2/19, 3/19, 9/38, 1/2]
    ppl_s, ppl_t = [40.0, 60.0, 90.0, 190.0], [10.0] * 4
    np.testing.assert_allclose(log_ratio_weights(ppl_s, ppl_t), [2 / 19, 3 / 19, 9 / 38, 1 / 2], rtol=1e-14)
    # Eq. 1 puts 1 / (1 + e^-10 + e^-13 + e^-15) of the mass on the last domain
    eq1 = ddk_weights(ppl_s, ppl_t)
    assert eq1[3] == pytest.approx(1 / (1 + math.exp(-10) + math.exp(-13) + math.exp(-15)), rel=1e-14) and eq1[3] > 0.9999
    # τ = 2: ∝ √ratio = [2, √6, 3, √19]
    root = np.sqrt([4.0, 6.0, 9.0, 19.0])
    np.testing.assert_allclose(log_ratio_weights(ppl_s, ppl_t, tau=2.0), root / root.sum(), rtol=1e-14)


def test_bound_max_over_min_weight():
    """max w / min w = (max ratio / min ratio)^(1/τ); Eq. 1's is exp(max ratio − min ratio)."""
    rng = np.random.default_rng(0)
    for tau in (0.25, 0.5, 1.0, 3.0):
        for _ in range(20):
            ratio = np.exp(rng.uniform(0, 5, size=int(rng.integers(2, 12))))  # ratios 1 .. 148
            w = log_ratio_weights(ratio, np.ones_like(ratio), tau)
            assert w.max() / w.min() == pytest.approx((ratio.max() / ratio.min()) ** (1 / tau), rel=1e-9)
            assert np.array_equal(np.argsort(w, kind="stable"), np.argsort(ratio, kind="stable"))  # same order as the ratios
    # the 20-step study's ratios (docs/results-tables.md): Eq. 1 gives 0.943 to python_code, the variant 0.192
    study = [8.58, 3.92, 5.98, 12.25, 8.70, 15.24, 10.15, 6.83, 7.91]
    eq1, var = ddk_weights(study, [1.0] * 9), log_ratio_weights(study, [1.0] * 9)
    assert eq1.max() / eq1.min() == pytest.approx(math.exp(15.24 - 3.92), rel=1e-9) and eq1.max() > 0.94
    assert var.max() / var.min() == pytest.approx(15.24 / 3.92, rel=1e-12) and var.max() == pytest.approx(15.24 / sum(study))


def test_no_overflow_for_huge_ratios_or_tiny_tau():
    w = log_ratio_weights([1e300, 1.0, 1e-300], [1.0, 1.0, 1.0], tau=1e-3)
    assert np.isfinite(w).all() and w.tolist() == [1.0, 0.0, 0.0]
    w = log_ratio_weights([2.0, 1.0], [1.0, 1.0], tau=1e-300)  # log(2)/τ overflows unless the max is taken out first
    assert w.tolist() == [1.0, 0.0]
    # a domain with r_t = 0 keeps ψ = 0 even if its ratio is the largest and τ tiny: ψ = [0, 1·(1/2)^(1e300)] -> [0, 1]
    r = log_ratio_update([0.0, 1.0], [2.0, 1.0], [1.0, 1.0], alpha=0.5, tau=1e-300)
    np.testing.assert_allclose(r, [0.25, 0.75], rtol=1e-15)
    r = log_ratio_update([0.5, 0.5], [1e300, 1.0], [1e-5, 1.0], alpha=1.0, tau=0.01)
    assert np.isfinite(r).all() and r.tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- the variant's smoothed update


def test_log_ratio_update_hand_computed():
    # τ = 1: ψ = r_t·ratio = [0.5·2, 0.3·3, 0.2·1] = [1.0, 0.9, 0.2], Σ 2.1 -> [10, 9, 2]/21;
    # r = 0.5·that + 0.5/3 = [10/42 + 7/42, 9/42 + 7/42, 2/42 + 7/42] = [17, 16, 9]/42
    r = log_ratio_update(R_T, PPL_S, PPL_T, alpha=0.5)
    np.testing.assert_allclose(r, [17 / 42, 16 / 42, 9 / 42], rtol=1e-14)
    assert r.dtype == np.float64 and r.sum() == pytest.approx(1.0, abs=1e-15)
    assert (r >= 0.5 / 3).all()  # the uniform floor (1 − α)/N
    # τ = 0.5: ψ = r_t·ratio² = [2.0, 2.7, 0.2], Σ 4.9; α = 1 (no floor): [20, 27, 2]/49
    np.testing.assert_allclose(log_ratio_update(R_T, PPL_S, PPL_T, alpha=1.0, tau=0.5), [20 / 49, 27 / 49, 2 / 49], rtol=1e-14)
    np.testing.assert_allclose(log_ratio_update(R_T, PPL_S, PPL_T, alpha=0.0, tau=0.5), [1 / 3] * 3, rtol=1e-15)
    # without smoothing: the variant's weights on the new perplexities, [2, 3, 1]/6, no memory of r_t
    np.testing.assert_allclose(log_ratio_update(R_T, PPL_S, PPL_T, smoothing=False), [1 / 3, 1 / 2, 1 / 6], rtol=1e-14)
    # from the variant's own starting point (τ = 1), ψ ∝ ratio² : [4, 9, 1]/14
    r0 = log_ratio_weights(PPL_S, PPL_T)
    np.testing.assert_allclose(log_ratio_update(r0, PPL_S, PPL_T, alpha=1.0), [4 / 14, 9 / 14, 1 / 14], rtol=1e-14)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_tau_raises_data_error(tau):
    with pytest.raises(DataError, match="ddk_tau must be a finite number > 0"):
        log_ratio_weights(PPL_S, PPL_T, tau)
    with pytest.raises(DataError, match="ddk_tau"):
        log_ratio_update(R_T, PPL_S, PPL_T, tau=tau)
    with pytest.raises(DataError, match="unknown ddk_factor"):
        discrepancy_weights(PPL_S, PPL_T, "exp")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the paper's factor is unchanged


def test_ratio_factor_is_eq1_and_eq2_unchanged():
    # the values of test_mixture (softmax([2, 3, 1]) and Eq. 2 from r_t = [0.5, 0.3, 0.2])
    for tau in (1.0, 7.0):  # τ is not used by the paper's factor
        w = discrepancy_weights(PPL_S, PPL_T, "ratio", tau)
        assert np.array_equal(w, ddk_weights(PPL_S, PPL_T))
        np.testing.assert_allclose(w, [0.24472847, 0.66524096, 0.09003057], rtol=1e-7)
        r = discrepancy_update(R_T, PPL_S, PPL_T, alpha=0.5, smoothing=True, factor="ratio", tau=tau)
        np.testing.assert_allclose(r, [0.34664444, 0.46020485, 0.19315072], rtol=1e-7)
        plain = discrepancy_update(R_T, PPL_S, PPL_T, smoothing=False, factor="ratio", tau=tau)
        assert np.array_equal(plain, ddk_weights(PPL_S, PPL_T))
    # bit for bit the formula Eq. 2 had before the variant existed
    ratio = np.array(PPL_S) / np.array(PPL_T)
    log_psi = np.log(np.array(R_T)) + ratio
    e = np.exp(log_psi - log_psi.max())
    assert np.array_equal(ddk_update(R_T, PPL_S, PPL_T), 0.5 * (e / e.sum()) + 0.5 / 3)
    assert np.array_equal(mixture_weights("ddk", PPL_S, PPL_T, [1, 1, 1]), ddk_weights(PPL_S, PPL_T))
    np.testing.assert_allclose(mixture_weights("ddk", PPL_S, PPL_T, [1, 1, 1], "log-ratio", 1.0), [1 / 3, 1 / 2, 1 / 6], rtol=1e-14)


# ---------------------------------------------------------------- plan


def exact_scores(tmp_path, ratios: dict[str, float], name: str = "score"):
    """A score artifact whose domains.arrow has teacher ppl 10 and student ppl 10·ratio, exactly."""
    samples = samples_table(random_rows({d: 4 for d in ratios}))
    dom = domain_table(samples)
    names = dom.column("domain").to_pylist()
    dom = dom.set_column(dom.schema.get_field_index("teacher_ppl"), "teacher_ppl", pa.array([10.0] * len(names), pa.float64()))
    dom = dom.set_column(dom.schema.get_field_index("student_ppl"), "student_ppl",
                         pa.array([10.0 * ratios[d] for d in names], pa.float64()))
    return write_scores(tmp_path / name, samples, dom)


def test_plan_with_log_ratio_records_it_and_weights_by_ratio(tmp_path):
    scores = exact_scores(tmp_path, {"a": 1.0, "b": 2.0, "c": 4.0})
    out = run(PlanConfig(scores=str(scores), out=str(tmp_path / "p"), ddk_factor="log-ratio", plot=True)).path
    art = read_artifact(out, "plan")
    mix = art.table("mixture.arrow")
    assert mix.column("domain").to_pylist() == ["a", "b", "c"]
    np.testing.assert_allclose(mix.column("weight").to_numpy(), [1 / 7, 2 / 7, 4 / 7], rtol=1e-14)  # ∝ ratio [1, 2, 4]
    m = json.loads((out / "manifest.json").read_text())
    assert m["plan"]["mixture"] == {"kind": "ddk", "alpha": 0.5, "interval": 1000, "smoothing": True,
                                    "factor": "log-ratio", "tau": 1.0}
    assert m["config"]["ddk_factor"] == "log-ratio" and m["config"]["ddk_tau"] == 1.0
    rec = PlanRecord.from_manifest(m)
    assert (rec.mixture.factor, rec.mixture.tau) == ("log-ratio", 1.0)
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # τ = 2: ∝ √ratio = [1, √2, 2]
    out2 = run(PlanConfig(scores=str(scores), out=str(tmp_path / "p2"), ddk_factor="log-ratio", ddk_tau=2.0)).path
    root = np.array([1.0, math.sqrt(2), 2.0])
    np.testing.assert_allclose(read_artifact(out2, "plan").table("mixture.arrow").column("weight").to_numpy(), root / root.sum(),
                               rtol=1e-14)
    assert PlanRecord.from_manifest(read_artifact(out2, "plan").manifest).mixture.tau == 2.0

    # the paper's factor (default): Eq. 1, and the manifest as before the option existed (no factor keys)
    out3 = run(PlanConfig(scores=str(scores), out=str(tmp_path / "p3"))).path
    m3 = read_artifact(out3, "plan").manifest
    e = np.exp([1.0, 2.0, 4.0])
    np.testing.assert_allclose(read_artifact(out3, "plan").table("mixture.arrow").column("weight").to_numpy(), e / e.sum(), rtol=1e-14)
    assert m3["plan"]["mixture"] == {"kind": "ddk", "alpha": 0.5, "interval": 1000, "smoothing": True}
    assert "ddk_factor" not in m3["config"] and "ddk_tau" not in m3["config"]
    assert PlanRecord.from_manifest(m3).mixture == MixtureSettings("ddk", 0.5, 1000, True, "ratio", 1.0)


def test_plan_notes_eq1_concentration_only_for_large_ratio_spreads(tmp_path, capsys):
    # ratios 1.2–1.8 (the paper's): Eq. 1 is mild, no note; 4–19 (a pruned student): 1.00 on "d", and a note
    run(PlanConfig(scores=str(exact_scores(tmp_path, {"a": 1.2, "b": 1.5, "c": 1.8}, "s1")), out=str(tmp_path / "p1")))
    assert "Eq. 1" not in capsys.readouterr().err
    big = exact_scores(tmp_path, {"a": 4.0, "b": 6.0, "c": 9.0, "d": 19.0}, "s2")
    run(PlanConfig(scores=str(big), out=str(tmp_path / "p2")))
    err = " ".join(capsys.readouterr().err.split())
    assert "DDK's Eq. 1 puts 1.00 of the sampling on d (ppl ratios 4.00–19.00" in err and "--ddk-factor log-ratio" in err
    run(PlanConfig(scores=str(big), out=str(tmp_path / "p3"), ddk_factor="log-ratio"))  # the bounded factor: no note
    run(PlanConfig(scores=str(big), out=str(tmp_path / "p4"), mixture="uniform"))
    assert "Eq. 1" not in capsys.readouterr().err


def test_plan_figure_title_names_the_formula():
    assert mixture_formula(MixtureSettings("ddk", 0.5, 10, True)) == "ddk = softmax(ppl_S / ppl_T)"
    assert mixture_formula(MixtureSettings("ddk", 0.5, 10, True, "log-ratio", 1.0)) == "ddk ∝ (ppl_S / ppl_T)^(1/τ), τ = 1"
    assert mixture_formula(MixtureSettings("ddk", 0.5, 10, True, "log-ratio", 0.5)).endswith("τ = 0.5")
    assert mixture_formula(MixtureSettings("uniform", 0.5, 10, True, "log-ratio", 2.0)) == "uniform"


@pytest.mark.parametrize("args, needle", [
    (["--ddk-factor", "log-ratio", "--ddk-tau", "0"], "ddk_tau must be > 0"),
    (["--ddk-factor", "log-ratio", "--ddk-tau=-1"], "ddk_tau must be > 0"),
    (["--ddk-factor", "log-ratio", "--ddk-tau", "nan"], "ddk_tau must be a finite number"),
    (["--ddk-factor", "log-ratio", "--ddk-tau", "inf"], "ddk_tau must be a finite number"),
    (["--ddk-tau", "2"], "applies only to ddk_factor = 'log-ratio'"),
    (["--ddk-factor", "exp"], "ddk_factor must be one of"),
])
def test_plan_cli_bad_tau_exits_2_with_one_line(tmp_path, args, needle):
    scores = write_scores(tmp_path / "score", samples_table(random_rows({"a": 3, "b": 3})))
    out = tmp_path / "p"
    r = invoke("plan", "--scores", scores, "--out", out, *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--ddk-tau", "0"], "ddk_tau must be > 0"),
    (["--ddk-factor", "ratio", "--ddk-tau", "3"], "applies only to ddk_factor = 'log-ratio'"),
    (["--ddk-factor", "softmax"], "ddk_factor must be one of"),
])
def test_train_cli_bad_factor_options_exit_2_before_any_work(tmp_path, args, needle):
    r = invoke("train", "--plan", tmp_path / "nope", "--teacher", "t", "--student", "s", "--out", tmp_path / "o", *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output


# ---------------------------------------------------------------- train: DomainMixer


def test_domain_mixer_uses_the_chosen_factor_at_an_update():
    common = dict(plan_weights=R_T, teacher_ppl=PPL_T, student_ppl=[9.0, 9.0, 9.0], interval=2, alpha=0.5, smoothing=True)
    variant = DomainMixer.create("ddk", ["a", "b", "c"], factor="log-ratio", tau=1.0, **common)
    paper = DomainMixer.create("ddk", ["a", "b", "c"], **common)  # default: the paper's factor
    assert (paper.factor, variant.factor) == ("ratio", "log-ratio")
    np.testing.assert_allclose(variant.update(2, PPL_S), [17 / 42, 16 / 42, 9 / 42], rtol=1e-14)
    np.testing.assert_allclose(paper.update(2, PPL_S), [0.34664444, 0.46020485, 0.19315072], rtol=1e-7)
    assert [h["weight"] for h in variant.history[-3:]] == pytest.approx([17 / 42, 16 / 42, 9 / 42], rel=1e-14)
    squared = DomainMixer.create("ddk", ["a", "b", "c"], factor="log-ratio", tau=0.5, **{**common, "alpha": 1.0})
    np.testing.assert_allclose(squared.update(2, PPL_S), [20 / 49, 27 / 49, 2 / 49], rtol=1e-14)
    with pytest.raises(ConfigError, match="ddk_tau a finite number > 0"):
        DomainMixer.create("ddk", ["a", "b", "c"], factor="log-ratio", tau=0.0, **common)


def test_domain_mixer_checkpoint_keeps_its_keys_and_resumes_bitwise():
    def make():
        return DomainMixer.create("ddk", ["a", "b", "c"], [1 / 3] * 3, PPL_T, [9.0] * 3, interval=1, alpha=0.5, smoothing=True,
                                  factor="log-ratio", tau=0.7)

    a = make()
    a.update(1, PPL_S)
    state = json.loads(json.dumps(a.state_dict()))
    assert set(state) == {"mode", "domains", "weights", "history"}  # as before the variant: old checkpoints still load
    after = a.update(2, [5.0, 6.5, 3.1]).copy()
    b = make()
    b.load_state_dict(state)
    assert np.array_equal(b.update(2, [5.0, 6.5, 3.1]), after) and b.history == a.history


def test_train_takes_the_plans_factor_unless_overridden():
    from distillkit.pipelines.train import TrainConfig, initial_state

    hint = typing.get_type_hints(TrainConfig)["ddk_factor"]
    assert set(typing.get_args(typing.get_args(hint)[0])) == set(typing.get_args(DdkFactor))  # one list of choices
    inputs = SimpleNamespace(
        schedule=SimpleNamespace(mixture=MixtureSettings("ddk", 0.5, 2, True, "log-ratio", 0.5)), domains=["a", "b", "c"],
        plan_weights=np.array(R_T), teacher_ppl=np.array(PPL_T), student_ppl=np.array([9.0] * 3),
        domain_codes=np.array([0, 0, 1, 1, 2, 2]), stages=np.array([0, 0, 0, 0, 0, 0]))
    cfg = TrainConfig(plan="p", teacher="t", student="s", out="o")
    mixer = initial_state(cfg, inputs).mixer
    assert (mixer.factor, mixer.tau, mixer.alpha, mixer.interval) == ("log-ratio", 0.5, 0.5, 2)
    mixer.alpha = 1.0
    np.testing.assert_allclose(mixer.update(2, PPL_S), [20 / 49, 27 / 49, 2 / 49], rtol=1e-14)  # ψ = r_t·ratio², by hand above
    mixer = initial_state(TrainConfig(plan="p", teacher="t", student="s", out="o", ddk_tau=2.0), inputs).mixer
    assert (mixer.factor, mixer.tau) == ("log-ratio", 2.0)
    mixer = initial_state(TrainConfig(plan="p", teacher="t", student="s", out="o", ddk_factor="ratio"), inputs).mixer
    assert mixer.factor == "ratio"
    np.testing.assert_allclose(mixer.update(2, PPL_S), [0.34664444, 0.46020485, 0.19315072], rtol=1e-7)  # Eq. 2


@pytest.mark.usefixtures("one_thread")
def test_training_reweights_with_the_plans_log_ratio_factor(pipeline, tmp_path, monkeypatch):
    """End to end on the tiny models: a log-ratio plan (τ = 0.5) -> train's updates are ψ = r·ratio²."""
    import distillkit.training.loop as loop
    from distillkit.pipelines.train import run as run_train
    from distillkit.training.ddk import Heldout

    plan = run(PlanConfig(scores=str(pipeline["scores"]), out=str(tmp_path / "plan"), stage_unit="steps", stage_length=3,
                          ddk_factor="log-ratio", ddk_tau=0.5)).path
    plan_mix = read_artifact(plan, "plan").table("mixture.arrow")
    r = plan_mix.column("weight").to_numpy()
    start = plan_mix.column("ppl_ratio").to_numpy() ** 2
    np.testing.assert_allclose(r, start / start.sum(), rtol=1e-12)  # the plan's weights ∝ ratio^(1/τ)

    fixed = np.array([50.0, 20.0, 80.0])  # a fixed measured student perplexity per domain
    monkeypatch.setattr(loop, "measure_heldout",
                        lambda model, seqs, rows, domains, **kw: Heldout(list(domains), np.ones(3), np.log(fixed), None))
    out = tmp_path / "train"
    run_train(cfg_for({**pipeline, "plan": plan}, out, steps=4, ddk_interval=2, eval_heldout=False))
    ratio = fixed / plan_mix.column("teacher_ppl").to_numpy()
    hist = read_artifact(out, "train").table("mixture.arrow").to_pandas()
    assert sorted(set(hist["step"])) == [0, 2, 4]
    for step in (2, 4):
        psi = r * ratio ** 2
        r = 0.5 * psi / psi.sum() + 0.5 / 3
        np.testing.assert_allclose(hist[hist.step == step]["weight"].to_numpy(), r, rtol=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_train_refuses_a_tau_the_plans_ratio_factor_would_ignore(pipeline, tmp_path):
    out = tmp_path / "train"
    r = invoke("train", "--plan", pipeline["plan"], "--teacher", pipeline["teacher"], "--student", pipeline["student"],
               "--out", out, "--ddk-tau", "3")
    assert r.exit_code == 2, r.output
    assert "applies only to the log-ratio factor" in r.output and "--ddk-factor log-ratio" in r.output
    assert not out.exists() and not (tmp_path / "train.partial").exists()
