"""bench/quality/summarize.py's paired figures on hand-made held-out rows (known answers)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "quality"))


def _held(after: dict[str, float]) -> list[dict]:
    # teacher 10, student before 30 (gap 20) in "a"; "b" starts at 10.4 (< 1.05 x teacher: left out)
    before = {"a": 30.0, "b": 10.4, "c": 50.0}
    return [{"domain": d, "tokens": 100, "teacher_ppl": 10.0, "student_ppl_before": before[d],
             "student_ppl_after": after[d], "kl_before": 1.0, "kl_after": 0.5} for d in before]


def test_gap_closed_min_leaves_out_domains_without_a_gap():
    from summarize import _gap_closed_min

    # a: (30 − 20) / 20 = 0.5; c: (50 − 30) / 40 = 0.5 → tie; make c lag: (50 − 40) / 40 = 0.25
    assert _gap_closed_min(_held({"a": 20.0, "b": 12.0, "c": 40.0})) == pytest.approx(0.25)
    # "b" got worse (10.4 → 12) but starts within 1.05 of the teacher, so it does not count
    assert _gap_closed_min(_held({"a": 20.0, "b": 50.0, "c": 30.0})) == pytest.approx(0.5)


def test_paired_table_against_b_by_seed():
    from summarize import _paired_table

    # b's lagging domain is c (0.25 closed; a closes 0.5). g closes c's gap by 0.5, 0.375, 0.625 → its lagging
    # domain closes 0.5, 0.375, 0.5 (a caps it at 0.5): Δ = 0.25, 0.125, 0.25
    runs = {"b": {s: {"heldout": _held({"a": 20.0, "b": 11.0, "c": 40.0})} for s in (0, 1, 2)},
            "g": {s: {"heldout": _held({"a": 20.0, "b": 11.0, "c": c})} for s, c in ((0, 30.0), (1, 35.0), (2, 25.0))}}
    rows = _paired_table(runs, ["b", "g"])
    gap = next(r for r in rows if "lagging" in r)
    cells = [c.strip() for c in gap.strip("|").split("|")]
    assert cells[0] == "g" and cells[2] == "3"
    # mean 0.20833, sd 0.072169, t(0.975, 2) = 4.302653: half-width 4.302653 · 0.072169 / √3 = 0.179277
    assert cells[3] == "+0.2083 [+0.0291, +0.3876]"
    assert cells[4] == "better"
    ppl = next(r for r in rows if "held-out ppl" in r)
    # c's perplexity is lower on every seed but by 10, 5, 15: the mean Δ is negative, its CI crosses 0
    pcells = [c.strip() for c in ppl.strip("|").split("|")]
    assert pcells[3].startswith("-") and pcells[4] == "no difference detected"
    assert math.isfinite(float(cells[5])) and float(cells[5]) > 0


def test_run_study_records_the_reused_scores_document_count(tmp_path):
    """With --scores, study.json records the scores' own max_per_domain, not the option's unused default; a
    later invocation with another setting is refused."""
    import argparse
    import json

    import run_study

    scores = tmp_path / "score"
    scores.mkdir()
    (scores / "manifest.json").write_text(json.dumps({"config": {"max_per_domain": 60}}))
    ns = argparse.Namespace(**dict.fromkeys(run_study.SETTING), seeds="0", arms="b", extra_seeds_arms=None,
                            tasks="none", limit=1)
    ns.scores, ns.max_per_domain = str(scores), 120
    run_study._record_study(tmp_path / "study.json", ns)
    assert json.loads((tmp_path / "study.json").read_text())["setting"]["max_per_domain"] == 60
    ns.steps = 40
    with pytest.raises(SystemExit, match="another setting"):
        run_study._record_study(tmp_path / "study.json", ns)
