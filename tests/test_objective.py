"""`distillkit.losses.objective`, the one loss entry point of training: chunked vs plain parity of values and
gradients for dense and sparse (stored top-k) teachers, the CE mix, and the held-out sums."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distillkit.losses import LinearHead, LossSpec, TopKTeacher, heldout_sums, kd_loss, objective, sparse_kd_loss
from tests.test_losses import _grads, _heads, _logits

def _step_inputs(seed: int):
    """A padded student head, labels with ignored positions (KD and CE both skip them), a top-4 teacher."""
    hidden, weight, bias, teacher, mask, V = _heads(seed=seed)
    labels = torch.randint(0, V, mask.shape, generator=torch.Generator().manual_seed(seed + 7))
    labels[~mask] = -100
    lps, ids = torch.log_softmax(_logits(*mask.shape, V, seed=seed + 8), -1).topk(4, -1)
    return hidden, weight, bias, teacher, labels, TopKTeacher(ids, lps), V


def _objective(impl, kind, form, lam, hidden, weight, bias, labels, teacher, V, tail="bucket"):
    spec = LossSpec(kind, {}, form, impl, V, chunk_size=5, tail=tail)
    params = {"t": 0.6} if kind == "taid" else None
    return objective(spec, LinearHead(hidden, weight, bias), labels, teacher, temperature=1.5, kd_weight=lam, params=params)


# (form, λ): KD only (no CE weight), a POCL mix, and the additive form (CE weight 1).
MIXES = [("pocl", 1.0), ("pocl", 0.3), ("additive", 0.5)]


@pytest.mark.parametrize("kind", ["fkl", "jsd", "akl"])
@pytest.mark.parametrize("tail", ["bucket", "renorm"])
@pytest.mark.parametrize("form,lam", MIXES)
def test_sparse_objective_chunked_matches_plain_values_and_gradients(kind, tail, form, lam):
    """Offline top-k through the one entry point: the fused chunked path equals full logits + sparse_kd_loss + CE."""
    hidden, weight, bias, _, labels, topk, V = _step_inputs(seed=160)
    assert int((labels != -100).sum()) % 5 != 0  # the last chunk is partial
    plain = _objective("plain", kind, form, lam, hidden, weight, bias, labels, topk, V, tail)
    want = _grads(plain[0], [hidden, weight, bias])
    chunked = _objective("chunked", kind, form, lam, hidden, weight, bias, labels, topk, V, tail)
    got = _grads(chunked[0], [hidden, weight, bias])
    w_kd, w_ce = LossSpec(kind, {}, form, "plain", V).weights(lam)
    assert chunked[0].item() == pytest.approx(w_kd * chunked[1].item() + w_ce * chunked[2].item(), rel=1e-6)
    for a, b in zip(chunked, plain):  # objective, kd, ce
        assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-7)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(got[1][V:]) == 0  # padded head rows get no gradient


@pytest.mark.parametrize("kind", ["fkl", "rkl", "taid"])
@pytest.mark.parametrize("form,lam", MIXES)
def test_dense_objective_chunked_matches_plain_values_and_gradients(kind, form, lam):
    """Online teacher through the one entry point: its LinearHead (chunked) or its full logits (plain)."""
    hidden, weight, bias, teacher, labels, _, V = _step_inputs(seed=170)
    teacher_logits = teacher.hidden @ teacher.weight.t() + teacher.bias
    plain = _objective("plain", kind, form, lam, hidden, weight, bias, labels, teacher_logits, V)
    want = _grads(plain[0], [hidden, weight, bias])
    chunked = _objective("chunked", kind, form, lam, hidden, weight, bias, labels, teacher, V)
    got = _grads(chunked[0], [hidden, weight, bias])
    for a, b in zip(chunked, plain):
        assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-7)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_objective_without_targets_is_zero_with_zero_gradients():
    hidden, weight, bias, teacher, labels, topk, V = _step_inputs(seed=175)
    labels = torch.full_like(labels, -100)
    for impl in ("plain", "chunked"):
        for t in (topk, teacher if impl == "chunked" else teacher.hidden @ teacher.weight.t() + teacher.bias):
            loss, kd, ce = _objective(impl, "fkl", "pocl", 0.5, hidden, weight, bias, labels, t, V)
            assert loss.item() == kd.item() == ce.item() == 0.0
            assert all(torch.count_nonzero(g) == 0 for g in _grads(loss, [hidden, weight, bias]))


def test_heldout_sums_are_summed_nll_and_forward_kl():
    hidden, weight, bias, teacher, labels, topk, V = _step_inputs(seed=180)
    spec, student, n = LossSpec("jsd", {"beta": 0.3}, "pocl", "chunked", V, chunk_size=3), LinearHead(hidden, weight, bias), int((labels != -100).sum())
    logits = hidden @ weight.t() + bias
    with torch.no_grad():
        nll, kl = heldout_sums(spec, student, labels, teacher)
        nll_k, kl_k = heldout_sums(spec, student, labels, topk)
        nll_0, kl_0 = heldout_sums(spec, student, labels, None)
        want_nll = F.cross_entropy(logits[..., :V].reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="sum")
        want_kl = kd_loss(logits, teacher.hidden @ teacher.weight.t() + teacher.bias, labels != -100, "fkl", vocab_size=V) * n
        want_kl_k = sparse_kd_loss(logits, topk.ids, topk.logprobs, labels != -100, "fkl", vocab_size=V) * n
    assert nll.dtype == kl.dtype == torch.float64 and kl_0.item() == 0.0
    assert nll.item() == pytest.approx(want_nll.item(), rel=1e-6) and nll_k.item() == nll_0.item() == nll.item()
    assert kl.item() == pytest.approx(want_kl.item(), rel=1e-5)  # forward KL whatever the run's divergence
    assert kl_k.item() == pytest.approx(want_kl_k.item(), rel=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "plain"])
def test_objective_without_a_teacher_is_plain_cross_entropy(impl):
    """train --teacher-mode none: no teacher, whatever the stage's λ, the objective is CE (value and gradient)."""
    hidden, weight, bias, _, labels, _, V = _step_inputs(seed=185)
    h = hidden.detach().clone().requires_grad_(True)
    obj, kd, ce = _objective(impl, "fkl", "pocl", 0.5, h, weight, bias, labels, None, V)
    obj.backward()
    h2 = hidden.detach().clone().requires_grad_(True)
    logits = torch.nn.functional.linear(h2, weight, bias)[..., :V]
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=-100)
    want.backward()
    assert float(kd) == 0.0 and torch.allclose(obj.detach(), want.detach(), atol=1e-5) and torch.allclose(ce, want.detach(), atol=1e-5)
    assert torch.allclose(h.grad, h2.grad, atol=1e-6)

