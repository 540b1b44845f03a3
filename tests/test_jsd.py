"""Generalized JSD(β) (GKD's divergence): its ends are forward / reverse KL and a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

from distillkit.losses import kd_loss

from .test_losses import _grads, _logits


def test_jsd_endpoints_are_forward_and_reverse_kl_as_in_gkd():
    """β = 0 trains forward KL and β = 1 reverse KL (GKD / TRL's convention), values and gradients."""
    zs = _logits(2, 3, 6, seed=8).requires_grad_()
    zt = _logits(2, 3, 6, seed=9)
    for beta, kind in ((0.0, "fkl"), (1.0, "rkl")):
        loss, ref = kd_loss(zs, zt, None, "jsd", beta=beta), kd_loss(zs, zt, None, kind)
        assert loss.item() > 0 and loss.item() == pytest.approx(ref.item(), rel=1e-6)
        torch.testing.assert_close(_grads(loss, [zs])[0], _grads(ref, [zs])[0])


def test_jsd_hand_computed_three_token_vocabulary():
    p, q = [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]  # teacher, student
    zt, zs = torch.log(torch.tensor([[p]])), torch.log(torch.tensor([[q]]))
    for beta in (0.1, 0.5, 0.9):
        m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
        want = beta * sum(a * math.log(a / c) for a, c in zip(p, m)) + (1 - beta) * sum(b * math.log(b / c) for b, c in zip(q, m))
        assert kd_loss(zs, zt, None, "jsd", beta=beta).item() == pytest.approx(want, rel=1e-5)
    # β = 0.5 by hand: m = (0.35, 0.4, 0.25), KL(p‖m) = 0.047404, KL(q‖m) = 0.054346 -> 0.050875
    assert kd_loss(zs, zt, None, "jsd", beta=0.5).item() == pytest.approx(0.050875, abs=2e-6)
    assert kd_loss(zs, zt, None, "jsd", beta=0.0).item() == pytest.approx(sum(a * math.log(a / b) for a, b in zip(p, q)), rel=1e-5)


def test_jsd_limits_approach_kl_linearly():
    zs, zt = _logits(2, 3, 6, seed=10), _logits(2, 3, 6, seed=11)
    fkl = kd_loss(zs, zt, None, "fkl").item()
    rkl = kd_loss(zs, zt, None, "rkl").item()
    # JSD_β = β·KL(p‖q) + O(β²) near 0 and (1−β)·KL(q‖p) + O((1−β)²) near 1: JSD/β → KL, error ∝ β.
    for kl, beta_of in ((fkl, lambda e: e), (rkl, lambda e: 1 - e)):
        err = {e: abs(kd_loss(zs, zt, None, "jsd", beta=beta_of(e)).item() / e - kl) for e in (1e-3, 1e-4)}
        assert err[1e-4] < 1e-2 * kl
        assert err[1e-4] < err[1e-3] / 5
    assert 0 < kd_loss(zs, zt, None, "jsd", beta=1e-6).item() < 1e-5
