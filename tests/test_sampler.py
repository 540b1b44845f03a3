"""The train stage's pure parts: curriculum x mixture sampler, DDK updates, stage and LR schedules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import chisquare

from distillkit.errors import ConfigError, DataError
from distillkit.training.ddk import DomainMixer
from distillkit.training.sampler import CurriculumSampler, rank_slice
from distillkit.training.schedule import LRSchedule, lr_factor, plan_stages, stage_at


def toy(num_domains: int = 3, per_domain: int = 12, stages: int = 4):
    """Samples grouped by domain; within a domain, stage = position * S // n (like the plan's stratification)."""
    domain = np.repeat(np.arange(num_domains), per_domain)
    stage = np.tile(np.arange(per_domain) * stages // per_domain, num_domains)
    return domain, stage


def test_draws_only_from_current_stage_pool_and_cover_it():
    domain, stage = toy()
    s = CurriculumSampler(domain, stage, [1, 1, 1], seed=3)
    for st in range(4):
        s.set_stage(st)
        pool = set(np.flatnonzero(stage <= st).tolist())
        drawn = np.concatenate([s.next_batch(8) for _ in range(40)])
        assert set(drawn.tolist()) == pool  # nothing outside the pool, and every pool member shows up
    # a domain's stream is a permutation: its first len(pool) draws are all distinct
    s2 = CurriculumSampler(domain, stage, [1, 0, 0], seed=0)
    s2.set_stage(1)
    first = s2.next_batch(len(s2.pool(0)))
    assert sorted(first.tolist()) == s2.pool(0).tolist()
    with pytest.raises(ConfigError, match="stage 4 does not exist"):
        s.set_stage(4)


def test_state_dict_resumes_the_exact_sequence_through_json():
    domain, stage = toy()
    a = CurriculumSampler(domain, stage, [0.5, 0.3, 0.2], seed=7)
    b = CurriculumSampler(domain, stage, [0.5, 0.3, 0.2], seed=7)
    ref = []
    for i in range(12):
        if i == 5:
            a.set_stage(2)
            a.set_weights([0.1, 0.1, 0.8])
        ref.append(a.next_batch(5))
    for i in range(7):
        if i == 5:
            b.set_stage(2)
            b.set_weights([0.1, 0.1, 0.8])
        b.next_batch(5)
    c = CurriculumSampler(domain, stage, [1, 1, 1], seed=7)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert all(np.array_equal(c.next_batch(5), r) for r in ref[7:])
    other = CurriculumSampler(domain[:-1], stage[:-1], [1, 1, 1], seed=7)
    with pytest.raises(DataError, match="another plan"):
        other.load_state_dict(b.state_dict())


def test_domain_draws_match_weights_chi_square():
    domain, stage = toy(num_domains=4, per_domain=10)
    w = np.array([0.5, 0.3, 0.15, 0.05])
    s = CurriculumSampler(domain, stage, w, seed=11)
    s.set_stage(3)
    drawn = np.concatenate([s.next_batch(32) for _ in range(250)])  # 8,000 draws
    counts = np.bincount(domain[drawn], minlength=4)
    assert chisquare(counts, w * counts.sum()).pvalue > 0.01
    assert chisquare(counts, np.full(4, counts.sum() / 4)).pvalue < 1e-12  # and it is not just uniform


def test_zero_pool_domains_are_skipped_and_bad_weights_refused():
    domain = np.array([0, 0, 1, 1])
    stage = np.array([0, 1, 1, 1])  # domain 1 only enters at stage 1
    s = CurriculumSampler(domain, stage, [0.5, 0.5], seed=0)
    assert s.probabilities().tolist() == [1.0, 0.0]
    assert set(np.concatenate([s.next_batch(4) for _ in range(5)]).tolist()) == {0}
    with pytest.raises(DataError, match="non-negative"):
        s.set_weights([1.0, -1.0])
    s0 = CurriculumSampler(domain, stage, [0.0, 1.0], seed=0)
    with pytest.raises(DataError, match="no domain with a positive weight"):
        s0.next_batch(2)


def test_rank_slices_partition_the_global_batch():
    batch = np.arange(12)
    parts = [rank_slice(batch, r, 3) for r in range(3)]
    assert np.array_equal(np.concatenate(parts), batch)
    with pytest.raises(ConfigError):
        rank_slice(batch, 0, 5)


def eq2(r, ratio, alpha):
    """DDK Eq. 2 written out: psi = r * exp(ppl_S / ppl_T); r' = alpha * psi / sum(psi) + (1 - alpha) / N."""
    psi = [ri * math.exp(x) for ri, x in zip(r, ratio)]
    return [alpha * p / sum(psi) + (1 - alpha) / len(r) for p in psi]


def test_ddk_weights_follow_eq2_over_three_updates_with_a_fixed_gap():
    ppl_t, ppl_s = [10.0, 20.0, 5.0], [30.0, 25.0, 5.5]  # fixed measured gap: ratios 3, 1.25, 1.1
    r0 = [0.2, 0.3, 0.5]
    mixer = DomainMixer.create("ddk", ["a", "b", "c"], r0, ppl_t, [99.0, 99.0, 99.0], interval=4, alpha=0.5, smoothing=True)
    expected, r = [], r0
    for step in (4, 8, 12):
        assert mixer.due(step) and not mixer.due(step - 1)
        r = eq2(r, [s / t for s, t in zip(ppl_s, ppl_t)], 0.5)
        expected.append(r)
        got = mixer.update(step, ppl_s)
        np.testing.assert_allclose(got, r, rtol=1e-12, atol=0)
    assert abs(sum(expected[-1]) - 1) < 1e-12 and expected[-1][0] > expected[0][0]  # the lagging domain keeps gaining
    hist = mixer.table().to_pylist()
    assert [h["step"] for h in hist] == [0] * 3 + [4] * 3 + [8] * 3 + [12] * 3
    assert [h["weight"] for h in hist[-3:]] == pytest.approx(expected[-1], rel=1e-12)
    assert [h["student_ppl"] for h in hist[:3]] == [99.0] * 3 and [h["teacher_ppl"] for h in hist[-3:]] == ppl_t

    plain = DomainMixer.create("ddk", ["a", "b", "c"], r0, ppl_t, ppl_s, interval=4, alpha=0.5, smoothing=False)
    ratio = np.array(ppl_s) / np.array(ppl_t)
    np.testing.assert_allclose(plain.update(4, ppl_s), np.exp(ratio) / np.exp(ratio).sum(), rtol=1e-12)  # Eq. 1, no memory

    static = DomainMixer.create("static", ["a", "b"], [0.7, 0.3], [1, 1], [2, 2], interval=1, alpha=0.5, smoothing=True)
    assert not static.due(1) and static.weights.tolist() == [0.7, 0.3]
    uniform = DomainMixer.create("uniform", ["a", "b"], [0.7, 0.3], [1, 1], [2, 2], interval=1, alpha=0.5, smoothing=True)
    assert uniform.weights.tolist() == [0.5, 0.5]


def test_sampler_follows_ddk_weights_after_an_update():
    domain, stage = toy(num_domains=3, per_domain=8)
    mixer = DomainMixer.create("ddk", ["a", "b", "c"], [1 / 3] * 3, [10, 10, 10], [10, 10, 10], interval=1, alpha=0.5, smoothing=True)
    s = CurriculumSampler(domain, stage, mixer.weights, seed=5)
    s.set_stage(3)
    s.set_weights(mixer.update(1, [40, 10, 10]))  # domain a trails the teacher most
    drawn = np.concatenate([s.next_batch(50) for _ in range(120)])
    counts = np.bincount(domain[drawn], minlength=3)
    assert chisquare(counts, mixer.weights * counts.sum()).pvalue > 0.01
    assert 0.6 < mixer.weights[0] < 0.5 + 1 / 6  # smoothing (α = 0.5) keeps every domain above (1 - α)/N


PLAN = {
    "stage_length": {"unit": "steps", "value": 5},
    "stages": [{"stage": s, "temperature": 1 + s / 3, "kd_weight": 0.7 + 0.1 * s, "num_samples": 10 * (s + 1)} for s in range(4)],
}


def test_plan_stages_steps_epochs_and_overrides():
    st = plan_stages(PLAN, global_batch=4)
    assert [(s.start, s.end) for s in st] == [(0, 5), (5, 10), (10, 15), (15, 20)]
    assert [stage_at(st, k).stage for k in (0, 4, 5, 19, 25)] == [0, 0, 1, 3, 3]
    assert stage_at(st, 7).temperature == pytest.approx(4 / 3) and stage_at(st, 7).kd_weight == pytest.approx(0.8)
    short = plan_stages(PLAN, 4, total_steps=12)
    assert [(s.stage, s.start, s.end) for s in short] == [(0, 0, 5), (1, 5, 10), (2, 10, 12)]
    long = plan_stages(PLAN, 4, total_steps=30, temperature=1.0, kd_weight=0.2)
    assert long[-1].end == 30 and {s.temperature for s in long} == {1.0} and {s.kd_weight for s in long} == {0.2}
    epochs = plan_stages({**PLAN, "stage_length": {"unit": "epochs", "value": 1.0}}, global_batch=4)
    assert [s.end - s.start for s in epochs] == [3, 5, 8, 10]  # ceil(pool / batch)


def test_lr_warmup_cosine_and_restart_per_stage():
    assert [lr_factor(k, 0, 10, 2, 0.1) for k in (0, 1)] == [0.5, 1.0]
    assert lr_factor(9, 0, 10, 2, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    st = plan_stages(PLAN, 4)
    whole = LRSchedule(1e-3, tuple(st), warmup_fraction=0.1, min_lr_ratio=0.1)
    assert whole(0) == pytest.approx(5e-4) and whole(1) == pytest.approx(1e-3) and whole(19) < whole(10) < whole(2)
    per_stage = LRSchedule(1e-3, tuple(st), warmup_fraction=0.2, min_lr_ratio=0.1, restart_per_stage=True)
    assert [per_stage(k) for k in (0, 5, 10, 15)] == pytest.approx([1e-3] * 4)  # warmup 1 step: full lr at each start
    assert per_stage(4) < per_stage(1) and per_stage(9) == pytest.approx(per_stage(4))
