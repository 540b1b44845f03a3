import numpy as np
import pytest

from distillkit.difficulty import ranks, rouge_l, rrf_difficulty, rrf_scores


def test_ranks_break_ties_by_id():
    assert ranks(np.array([0.5, 0.1, 0.5]), ["b", "a", "a2"]).tolist() == [3, 1, 2]
    assert ranks(np.array([0.5, 0.1, 0.5]), ["b", "a", "a2"], descending=True).tolist() == [2, 3, 1]


def test_rrf_hand_computed():
    # three samples: rouge (higher easier) and ce (lower easier)
    rouge = np.array([0.9, 0.2, 0.5])
    ce = np.array([2.0, 1.0, 3.0])
    ids = ["x", "y", "z"]
    # rank_rouge: x=1, z=2, y=3 ; rank_ce: y=1, x=2, z=3
    expect = np.array([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62 + 1 / 63])
    np.testing.assert_allclose(rrf_scores(rouge, ce, ids), expect)
    d = rrf_difficulty(rouge, ce, ids)
    assert np.argsort(d).tolist() == [0, 1, 2]  # x easiest, then y, then z
    assert rrf_difficulty(np.array([1.0]), np.array([0.0]), ["only"])[0] == pytest.approx(0.0)


def test_rouge_l_known_strings():
    r = rouge_l(["the cat sat on the mat", "completely different", "the cats sitting"],
                ["the cat sat on the mat", "nothing shared here", "the cat sat"])
    assert r[0] == pytest.approx(1.0)
    assert r[1] == pytest.approx(0.0)
    # stemming: cats->cat, sitting->sit vs sat: LCS = "the cat" -> P = 2/3, R = 2/3
    assert r[2] == pytest.approx(2 / 3, rel=1e-6)
