"""Domain mixtures: DDK Eq. 1 and Eq. 2 on hand-computed cases, uniform, proportional."""

from __future__ import annotations

import numpy as np
import pytest

from distillkit.errors import DataError
from distillkit.mixture import ddk_update, ddk_weights, mixture_weights, proportional_weights, uniform_weights

# three domains: ppl_S / ppl_T = [4/2, 6/2, 3/3] = [2, 3, 1]
PPL_S = [4.0, 6.0, 3.0]
PPL_T = [2.0, 2.0, 3.0]


def test_ddk_eq1_hand_computed():
    # softmax([2, 3, 1]) = [e^2, e^3, e^1] / (e^2 + e^3 + e) = [7.389056, 20.085537, 2.718282] / 30.192875
    w = ddk_weights(PPL_S, PPL_T)
    np.testing.assert_allclose(w, [0.24472847, 0.66524096, 0.09003057], rtol=1e-7)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w.dtype == np.float64
    # equal ratios -> uniform, whatever the absolute perplexities
    np.testing.assert_allclose(ddk_weights([10.0, 2.0], [5.0, 1.0]), [0.5, 0.5])


def test_ddk_eq2_smoothed_update_hand_computed():
    r_t = [0.5, 0.3, 0.2]
    # psi = r_t * exp(ratio) = [0.5 e^2, 0.3 e^3, 0.2 e] = [3.694528, 6.025661, 0.543656], sum 10.263845
    # psi / sum = [0.359956, 0.587076, 0.052968]; r = 0.5 * that + 0.5 / 3
    r = ddk_update(r_t, PPL_S, PPL_T, alpha=0.5, smoothing=True)
    np.testing.assert_allclose(r, [0.34664444, 0.46020485, 0.19315072], rtol=1e-7)
    assert r.sum() == pytest.approx(1.0, abs=1e-12)
    # alpha = 1: no uniform floor; alpha = 0: uniform
    np.testing.assert_allclose(ddk_update(r_t, PPL_S, PPL_T, alpha=1.0), [0.35995554, 0.58707636, 0.0529681], rtol=1e-7)
    np.testing.assert_allclose(ddk_update(r_t, PPL_S, PPL_T, alpha=0.0), [1 / 3] * 3)
    # every domain keeps at least (1 - alpha) / N
    assert (r >= 0.5 / 3).all()
    # without smoothing: Eq. 1 on the new perplexities, no memory of r_t
    np.testing.assert_allclose(ddk_update(r_t, PPL_S, PPL_T, smoothing=False), ddk_weights(PPL_S, PPL_T))


def test_ddk_update_from_eq1_starting_point_and_no_overflow():
    r0 = ddk_weights(PPL_S, PPL_T)
    r1 = ddk_update(r0, PPL_S, PPL_T)
    # from Eq. 1, psi = softmax(ratio) * exp(ratio), so psi / sum(psi) = softmax(2 * ratio)
    e = np.exp(2 * np.array([2.0, 3.0, 1.0]))
    np.testing.assert_allclose(r1, 0.5 * e / e.sum() + 0.5 / 3, rtol=1e-12)
    # ratios of 1000 would overflow exp() in float64; the update works in log space
    big = ddk_update([0.5, 0.5], [2000.0, 1.0], [2.0, 1.0])
    assert np.isfinite(big).all() and big.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(big, [0.75, 0.25])
    np.testing.assert_allclose(ddk_weights([2000.0, 1.0], [2.0, 1.0]), [1.0, 0.0])


def test_uniform_and_proportional():
    np.testing.assert_allclose(uniform_weights(4), [0.25] * 4)
    np.testing.assert_allclose(proportional_weights([100, 300, 600]), [0.1, 0.3, 0.6])
    np.testing.assert_allclose(mixture_weights("proportional", PPL_S, PPL_T, [1, 1, 2]), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(mixture_weights("uniform", PPL_S, PPL_T, [1, 1, 2]), [1 / 3] * 3)
    np.testing.assert_allclose(mixture_weights("ddk", PPL_S, PPL_T, [1, 1, 2]), ddk_weights(PPL_S, PPL_T))


@pytest.mark.parametrize(
    "call",
    [
        lambda: ddk_weights([1.0, float("inf")], [1.0, 1.0]),
        lambda: ddk_weights([1.0, 2.0], [1.0, 0.0]),
        lambda: ddk_weights([1.0, 2.0], [1.0]),
        lambda: ddk_weights([], []),
        lambda: ddk_update([0.5, 0.5, 0.0], PPL_S[:2], PPL_T[:2]),
        lambda: ddk_update([0.5, 0.5], PPL_S[:2], PPL_T[:2], alpha=1.5),
        lambda: proportional_weights([0, 0]),
        lambda: uniform_weights(0),
    ],
)
def test_bad_mixture_inputs_raise_data_error(call):
    with pytest.raises(DataError):
        call()
