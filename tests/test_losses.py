"""Known answers, invariants and path parity for distillkit.losses (CPU, fp32, tiny shapes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillkit.losses import (
    DIVERGENCES,
    LinearHead,
    TaidSchedule,
    chunked_kd_and_ce,
    chunked_kd_ce_objective,
    chunked_kd_loss,
    kd_loss,
    sparse_kd_loss,
)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add synchronisation (2-3x slower on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Every divergence with the parameters it needs (taid's t has no default).
PARAMS = {kind: ({"t": 0.6} if kind == "taid" else {}) for kind in DIVERGENCES}


def _logits(*shape: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


# --------------------------------------------------------------------------- known answers


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * (np.log(a) - np.log(b))).sum(-1)


def _np_akl(p: np.ndarray, q: np.ndarray, mu: float) -> np.ndarray:
    out = []
    for pi, qi in zip(p, q):
        order = np.argsort(-pi)
        cum = np.cumsum(pi[order])
        n_head = max(1, int((cum <= mu).sum()))
        head = np.zeros_like(pi, dtype=bool)
        head[order[:n_head]] = True
        err = np.abs(pi - qi)
        w = err[head].sum() / err.sum()
        out.append(w * _np_kl(pi, qi) + (1 - w) * _np_kl(qi, pi))
    return np.array(out)


def _np_expected(zs: np.ndarray, zt: np.ndarray, T: float) -> dict[str, float]:
    """Every divergence by its textbook formula, mean over positions, times T²."""
    p, q = _np_softmax(zt / T), _np_softmax(zs / T)
    m = 0.5 * p + 0.5 * q
    pt = _np_softmax(0.4 * zs / T + 0.6 * zt / T)  # TAID, t = 0.6
    rows = {
        "fkl": _np_kl(p, q),
        "rkl": _np_kl(q, p),
        "jsd": 0.5 * _np_kl(p, m) + 0.5 * _np_kl(q, m),
        "skl": _np_kl(p, 0.1 * p + 0.9 * q),
        "srkl": _np_kl(q, 0.9 * p + 0.1 * q),
        "tvd": 0.5 * np.abs(p - q).sum(-1),
        "akl": _np_akl(p, q, 0.5),
        "taid": _np_kl(pt, q),
        "jeffreys": _np_kl(p, q) + _np_kl(q, p),
    }
    return {k: float(v.mean() * T * T) for k, v in rows.items()}


# 3 positions x 4 words; the second position's teacher is peaked (AKL head = top-1 only).
ZS = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, -0.2, 1.5], [2.5, -0.5, 0.0, 0.7]])
ZT = np.array([[1.5, 1.0, 0.0, -0.5], [4.0, 0.1, -1.0, 0.2], [0.3, 0.2, 1.1, -0.8]])


@pytest.mark.parametrize("temperature", [1.0, 1.7])
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_known_answer_3_tokens_4_words(kind, temperature):
    expected = _np_expected(ZS, ZT, temperature)[kind]
    got = kd_loss(
        torch.tensor(ZS, dtype=torch.float32)[None],
        torch.tensor(ZT, dtype=torch.float32)[None],
        torch.ones(1, 3, dtype=torch.bool),
        kind,
        temperature=temperature,
        **PARAMS[kind],
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_known_answer_fkl_by_hand():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = ½ln2 + ½ln(2/3) = ½ ln(4/3).
    zs = torch.tensor([[[0.0, math.log(3.0)]]])
    zt = torch.zeros(1, 1, 2)
    assert kd_loss(zs, zt, None, "fkl").item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # TVD = ½(|½ − ¼| + |½ − ¾|) = ¼.
    assert kd_loss(zs, zt, None, "tvd").item() == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_of_a_distribution_from_itself_is_zero(kind):
    z = _logits(2, 5, 11, seed=1)
    for temperature in (1.0, 3.0):
        loss = kd_loss(z, z.clone(), None, kind, temperature=temperature, **PARAMS[kind])
        assert abs(loss.item()) < 1e-6


def test_mask_averages_over_unmasked_positions_only():
    zs, zt = _logits(1, 3, 4, seed=2), _logits(1, 3, 4, seed=3)
    mask = torch.tensor([[True, False, True]])
    zs_poisoned = zs.clone()
    zs_poisoned[0, 1] = float("nan")  # a masked position must not leak into the result
    got = kd_loss(zs_poisoned, zt, mask, "fkl")
    want = (kd_loss(zs[:, :1], zt[:, :1], None, "fkl") + kd_loss(zs[:, 2:], zt[:, 2:], None, "fkl")) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


# --------------------------------------------------------------------------- temperature rule


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_temperature_rule_is_T_squared_times_divergence_of_tempered(kind):
    zs, zt = _logits(2, 3, 9, seed=4), _logits(2, 3, 9, seed=5)
    T = 2.5
    tempered = kd_loss(zs, zt, None, kind, temperature=T, **PARAMS[kind])
    by_hand = T * T * kd_loss(zs / T, zt / T, None, kind, temperature=1.0, **PARAMS[kind])
    assert tempered.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_temperature_keeps_fkl_gradient_scale_comparable():
    # With T², d/dz_S = T·(q − p): at high T the gradient tends to (z_S − z_T)/V-ish, not to 0.
    zs = _logits(1, 4, 16, seed=6).requires_grad_()
    zt = _logits(1, 4, 16, seed=7)
    norms = [_grads(kd_loss(zs, zt, None, "fkl", temperature=T), [zs])[0].norm().item() for T in (4.0, 8.0, 16.0)]
    assert max(norms) / min(norms) < 1.5


# --------------------------------------------------------------------------- numerical safety


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_huge_logits_give_finite_values_and_gradients(kind):
    zs = torch.tensor([[[1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, 3.0, -2.0]]], requires_grad=True)
    zt = torch.tensor([[[-1e4, 1e4, 1.0, 0.0], [1e4, 0.0, -1e4, 2.0]]])
    lps, ids = torch.log_softmax(zt, -1).topk(2, -1)
    for loss in (
        kd_loss(zs, zt, None, kind, temperature=2.0, **PARAMS[kind]),
        sparse_kd_loss(zs, ids, lps, None, kind, tail="bucket", **PARAMS[kind]),
        sparse_kd_loss(zs, ids, lps, None, kind, tail="renorm", **PARAMS[kind]),
    ):
        (g,) = _grads(loss, [zs])
        assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_vocab_entries_masked_with_minus_inf_on_both_sides_are_ignored(kind):
    zs, zt = _logits(2, 3, 8, seed=12), _logits(2, 3, 8, seed=13)
    banned = [1, 6]
    zs_inf, zt_inf = zs.clone(), zt.clone()
    zs_inf[..., banned] = float("-inf")
    zt_inf[..., banned] = float("-inf")
    zs_inf.requires_grad_()
    loss = kd_loss(zs_inf, zt_inf, None, kind, temperature=2.0, **PARAMS[kind])
    (g,) = _grads(loss, [zs_inf])
    kept = [i for i in range(8) if i not in banned]
    want = kd_loss(zs[..., kept], zt[..., kept], None, kind, temperature=2.0, **PARAMS[kind])
    assert torch.isfinite(g).all() and torch.count_nonzero(g[..., banned]) == 0
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_fully_masked_batch_gives_zero_and_zero_gradients_on_every_path(kind):
    B, L, H, V, k = 2, 3, 4, 7, 3
    mask = torch.zeros(B, L, dtype=torch.bool)
    zs = _logits(B, L, V, seed=14).requires_grad_()
    hidden = _logits(B, L, H, seed=15).requires_grad_()
    weight = _logits(V, H, seed=16).requires_grad_()
    teacher = LinearHead(_logits(B, L, H, seed=17), _logits(V, H, seed=18))
    ids = torch.arange(k).expand(B, L, k)
    lps = torch.log_softmax(_logits(B, L, V, seed=19), -1)[..., :k]
    losses = [
        (kd_loss(zs, _logits(B, L, V, seed=20), mask, kind, **PARAMS[kind]), [zs]),
        (chunked_kd_loss(hidden, weight, teacher, mask, kind, chunk_size=2, **PARAMS[kind]), [hidden, weight]),
        (sparse_kd_loss(zs, ids, lps, mask, kind, **PARAMS[kind]), [zs]),
        (sparse_kd_loss(LinearHead(hidden, weight), ids, lps, mask, kind, **PARAMS[kind]), [hidden, weight]),
    ]
    for loss, inputs in losses:
        assert loss.item() == 0.0
        for g in _grads(loss, inputs):
            assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0


# --------------------------------------------------------------------------- chunked == plain


def _heads(dtype=torch.float32, seed=30):
    """Student/teacher heads with padded vocabularies (V=13 real rows; 15 and 18 rows)."""
    B, L, H, Ht, V = 2, 7, 8, 6, 13
    hidden = _logits(B, L, H, seed=seed, scale=1.0).to(dtype).requires_grad_()
    weight = _logits(V + 2, H, seed=seed + 1, scale=0.7).to(dtype).requires_grad_()
    bias = _logits(V + 2, seed=seed + 2, scale=0.5).to(dtype).requires_grad_()
    teacher = LinearHead(
        _logits(B, L, Ht, seed=seed + 3), _logits(V + 5, Ht, seed=seed + 4), _logits(V + 5, seed=seed + 5)
    )
    mask = torch.rand(B, L, generator=torch.Generator().manual_seed(seed + 6)) > 0.25
    return hidden, weight, bias, teacher, mask, V


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_chunked_matches_plain_values_and_gradients(kind):
    hidden, weight, bias, teacher, mask, V = _heads()
    student_logits = hidden @ weight.t() + bias
    teacher_logits = teacher.hidden @ teacher.weight.t() + teacher.bias
    plain = kd_loss(student_logits, teacher_logits, mask, kind, temperature=2.0, vocab_size=V, **PARAMS[kind])
    want = _grads(plain, [hidden, weight, bias])
    assert int(mask.sum()) % 3 != 0  # chunks of 3 positions: the last chunk is partial
    chunked = chunked_kd_loss(
        hidden, weight, teacher, mask, kind, student_bias=bias, vocab_size=V, temperature=2.0, chunk_size=3,
        **PARAMS[kind],
    )
    got = _grads(chunked, [hidden, weight, bias])
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(got[1][V:]) == 0  # padded head rows get no gradient


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_closed_form_fkl_gradient_equals_autograd_incl_zero_teacher_probabilities(temperature):
    """The fused path's FKL shortcut: same rows and logit gradient as autograd through tempered_rows,
    also where the teacher gives a token probability exactly 0 (a -inf logit: 0·log 0 = 0)."""
    from distillkit.losses.divergences import fkl_rows_and_grad, tempered_rows

    s = _logits(6, 11, seed=80).requires_grad_()
    t = _logits(6, 11, seed=81)
    t[0, 3] = t[2, :5] = float("-inf")
    rows_ref = tempered_rows(s, t, "fkl", temperature, {})
    (g_ref,) = torch.autograd.grad(rows_ref.sum(), s)
    s_before, t_before = s.detach().clone(), t.clone()
    rows, g = fkl_rows_and_grad(s.detach(), t, temperature)
    assert torch.isfinite(rows).all() and torch.isfinite(g).all()
    torch.testing.assert_close(rows, rows_ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-7)
    assert torch.equal(s.detach(), s_before) and torch.equal(t, t_before)  # inputs untouched (CE reuses them)


def test_fused_fkl_uses_the_closed_form_and_other_kinds_autograd(monkeypatch):
    import distillkit.losses.fused as fused

    calls = []
    real = fused.fkl_rows_and_grad
    monkeypatch.setattr(fused, "fkl_rows_and_grad", lambda *a: (calls.append(1), real(*a))[1])
    hidden, weight, bias, teacher, mask, V = _heads(seed=57)
    chunked_kd_loss(hidden, weight, teacher, mask, "fkl", student_bias=bias, vocab_size=V, chunk_size=4).backward()
    n_fkl, calls[:] = len(calls), []
    chunked_kd_loss(hidden, weight, teacher, mask, "rkl", student_bias=bias, vocab_size=V, chunk_size=4).backward()
    with torch.no_grad():  # no gradient wanted: the value path, not the closed form
        chunked_kd_loss(hidden, weight, teacher, mask, "fkl", student_bias=bias, vocab_size=V, chunk_size=4)
    assert n_fkl == -(-int(mask.sum()) // 4) and calls == []


def test_chunked_accepts_a_teacher_logits_function():
    hidden, weight, bias, teacher, mask, V = _heads(seed=40)
    teacher_logits = (teacher.hidden @ teacher.weight.t() + teacher.bias).reshape(-1, teacher.weight.shape[0])
    calls = []

    def fn(pos):
        calls.append(pos.numel())
        return teacher_logits[pos]

    got = chunked_kd_loss(hidden, weight, fn, mask, "rkl", student_bias=bias, vocab_size=V, chunk_size=4)
    want = chunked_kd_loss(hidden, weight, teacher, mask, "rkl", student_bias=bias, vocab_size=V, chunk_size=4)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert max(calls) <= 4 and sum(calls) == int(mask.sum())


def test_chunked_kd_and_ce_match_plain_for_any_mix():
    hidden, weight, bias, teacher, mask, V = _heads(seed=50)
    labels = torch.randint(0, V, mask.shape, generator=torch.Generator().manual_seed(1))
    labels[0, :3] = -100
    student_logits = hidden @ weight.t() + bias
    teacher_logits = teacher.hidden @ teacher.weight.t() + teacher.bias
    kd_ref = kd_loss(student_logits, teacher_logits, mask, "jsd", vocab_size=V, beta=0.3)
    ce_ref = F.cross_entropy(student_logits[..., :V].reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    want = _grads(0.3 * kd_ref + 0.7 * ce_ref, [hidden, weight, bias])
    kd, ce = chunked_kd_and_ce(
        hidden, weight, teacher, mask, labels, "jsd", student_bias=bias, vocab_size=V, chunk_size=5, beta=0.3
    )
    got = _grads(0.3 * kd + 0.7 * ce, [hidden, weight, bias])
    assert kd.item() == pytest.approx(kd_ref.item(), rel=1e-5)
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights", [(0.3, 0.7), (1.0, 0.0), (0.0, 1.0), (0.5, 1.0)])
@pytest.mark.parametrize("same_positions", [True, False])
def test_weighted_objective_matches_plain_mix_values_and_gradients(weights, same_positions):
    """The training step's path: one combined logit gradient per chunk, none for a zero weight."""
    hidden, weight, bias, teacher, mask, V = _heads(seed=55)
    labels = torch.randint(0, V, mask.shape, generator=torch.Generator().manual_seed(2))
    if same_positions:  # as in training: KD and CE on exactly the positions with a target
        labels[~mask] = -100
    else:  # KD and CE on overlapping but different positions (chunks with only one of them)
        labels[0, :3] = -100
    student_logits = hidden @ weight.t() + bias
    teacher_logits = teacher.hidden @ teacher.weight.t() + teacher.bias
    kd_ref = kd_loss(student_logits, teacher_logits, mask, "fkl", vocab_size=V, temperature=2.0)
    ce_ref = F.cross_entropy(student_logits[..., :V].reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    want = _grads(weights[0] * kd_ref + weights[1] * ce_ref, [hidden, weight, bias])
    loss, kd, ce = chunked_kd_ce_objective(
        hidden, weight, teacher, mask, labels, "fkl", weights=weights, student_bias=bias, vocab_size=V,
        temperature=2.0, chunk_size=3,
    )
    assert not kd.requires_grad and not ce.requires_grad
    assert kd.item() == pytest.approx(kd_ref.item(), rel=1e-5)
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
    assert loss.item() == pytest.approx(weights[0] * kd_ref.item() + weights[1] * ce_ref.item(), rel=1e-5)
    got = _grads(loss, [hidden, weight, bias])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    # the separate-outputs path mixed afterwards agrees with the fused objective
    kd2, ce2 = chunked_kd_and_ce(hidden, weight, teacher, mask, labels, "fkl", student_bias=bias, vocab_size=V,
                                 temperature=2.0, chunk_size=3)
    for g, w in zip(_grads(weights[0] * kd2 + weights[1] * ce2, [hidden, weight, bias]), got):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_weighted_objective_skips_the_gradient_of_a_zero_weight(monkeypatch):
    """w_ce = 0 costs CE's value only: one accumulation into the head per chunk, not two."""
    import distillkit.losses.fused as fused

    calls = []
    real = fused._accumulate
    monkeypatch.setattr(fused, "_accumulate", lambda *a: (calls.append(1), real(*a))[1])
    hidden, weight, bias, teacher, mask, V = _heads(seed=56)
    labels = torch.randint(0, V, mask.shape, generator=torch.Generator().manual_seed(3))
    labels[~mask] = -100
    args = dict(student_bias=bias, vocab_size=V, chunk_size=4)
    chunked_kd_ce_objective(hidden, weight, teacher, mask, labels, "fkl", weights=(1.0, 0.0), **args)[0].backward()
    fused_calls, calls[:] = len(calls), []
    kd, ce = chunked_kd_and_ce(hidden, weight, teacher, mask, labels, "fkl", **args)
    (kd + 0.0 * ce).backward()
    n_chunks = -(-int(mask.sum()) // 4)
    assert fused_calls == n_chunks and len(calls) == 2 * n_chunks


def test_chunked_without_trainable_inputs_computes_no_gradient():
    hidden, weight, bias, teacher, mask, V = _heads(seed=60)
    with torch.no_grad():
        loss = chunked_kd_loss(hidden.detach(), weight.detach(), teacher, mask, "fkl", vocab_size=V)
    assert not loss.requires_grad and torch.isfinite(loss)


# --------------------------------------------------------------------------- bf16


def test_bf16_inputs_give_fp32_results_close_to_fp32():
    hidden, weight, bias, teacher, mask, V = _heads(seed=70)
    args = dict(student_bias=None, vocab_size=V, temperature=2.0, chunk_size=4)
    fp32 = chunked_kd_loss(hidden, weight, teacher, mask, "fkl", **args)
    g32 = _grads(fp32, [hidden, weight])
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    bf16 = chunked_kd_loss(h16, w16, teacher, mask, "fkl", **args)
    g16 = _grads(bf16, [h16, w16])
    assert bf16.dtype == torch.float32 and g16[0].dtype == torch.bfloat16
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-2)
    for g, w in zip(g16, g32):
        assert (g.float() - w).norm() / w.norm() < 5e-2
    zs, zt = _logits(2, 3, 11, seed=71), _logits(2, 3, 11, seed=72)
    plain16 = kd_loss(zs.bfloat16(), zt.bfloat16(), None, "akl")
    assert plain16.dtype == torch.float32
    assert plain16.item() == pytest.approx(kd_loss(zs, zt, None, "akl").item(), rel=2e-2)


# --------------------------------------------------------------------------- sparse


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_sparse_with_k_equal_vocab_matches_dense(kind):
    B, L, V = 2, 4, 9
    zs = _logits(B, L, V, seed=80).requires_grad_()
    zt = _logits(B, L, V, seed=81)
    mask = torch.tensor([[True, True, False, True], [True, False, True, True]])
    # Stored top-k as an engine writes it: every id, sorted by teacher log-prob.
    lps, ids = torch.log_softmax(zt, -1).sort(-1, descending=True)
    for T in (1.0, 2.0):
        dense = kd_loss(zs, zt, mask, kind, temperature=T, **PARAMS[kind])
        (g_dense,) = _grads(dense, [zs])
        for tail in ("bucket", "renorm"):
            sparse = sparse_kd_loss(zs, ids, lps, mask, kind, temperature=T, tail=tail, **PARAMS[kind])
            (g_sparse,) = _grads(sparse, [zs])
            assert sparse.item() == pytest.approx(dense.item(), rel=1e-4, abs=1e-6), (T, tail)
            torch.testing.assert_close(g_sparse, g_dense, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt,tol", [("uint8", 1e-3), ("float16", 1e-4)])
def test_sparse_on_stored_top_k_with_k_equal_vocab_stays_close_to_dense(fmt, tol):
    """Quantised storage (distillkit.topk) with every id stored: loss within `tol` (relative) of the dense loss."""
    from distillkit.topk import decode, encode

    B, L, V = 2, 16, 300
    zs, zt = _logits(B, L, V, seed=84, scale=3.0), _logits(B, L, V, seed=85, scale=3.0)
    lps, ids = torch.log_softmax(zt, -1).sort(-1, descending=True)
    stored = encode(lps.reshape(-1, V).numpy(), fmt)
    deq = torch.from_numpy(decode(**stored)).reshape(B, L, V)
    for kind in DIVERGENCES:
        dense = kd_loss(zs, zt, None, kind, **PARAMS[kind]).item()
        # AKL's head/tail split is a threshold on the teacher's probabilities: rounding can move a token across it.
        rel = 2e-3 if kind == "akl" else tol
        for tail in ("bucket", "renorm"):
            sparse = sparse_kd_loss(zs, ids, deq, None, kind, tail=tail, **PARAMS[kind]).item()
            assert sparse == pytest.approx(dense, rel=rel), (kind, tail)


@pytest.mark.parametrize("kind", ["fkl", "akl", "taid"])
def test_sparse_fused_matches_sparse_plain(kind):
    hidden, weight, bias, _, mask, V = _heads(seed=90)
    k = 4
    lps, ids = torch.log_softmax(_logits(*mask.shape, V, seed=91), -1).topk(k, -1)
    for tail in ("bucket", "renorm"):
        logits = hidden @ weight.t() + bias
        plain = sparse_kd_loss(logits, ids, lps, mask, kind, tail=tail, vocab_size=V, temperature=1.5, **PARAMS[kind])
        want = _grads(plain, [hidden, weight, bias])
        fused = sparse_kd_loss(
            LinearHead(hidden, weight, bias), ids, lps, mask, kind, tail=tail, vocab_size=V, temperature=1.5,
            chunk_size=3, **PARAMS[kind],
        )
        got = _grads(fused, [hidden, weight, bias])
        assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_sparse_renorm_is_dense_over_the_k_ids():
    zs, zt = _logits(1, 3, 10, seed=100), _logits(1, 3, 10, seed=101)
    lps, ids = torch.log_softmax(zt, -1).topk(4, -1)
    got = sparse_kd_loss(zs, ids, lps, None, "rkl", tail="renorm", temperature=3.0)
    want = kd_loss(zs.gather(-1, ids), lps, None, "rkl", temperature=3.0)  # log-probs are logits up to a constant
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_sparse_bucket_is_kl_of_the_coarsened_distributions():
    zs, zt = _logits(1, 2, 10, seed=110), _logits(1, 2, 10, seed=111)
    lps, ids = torch.log_softmax(zt, -1).topk(3, -1)
    got = sparse_kd_loss(zs, ids, lps, None, "fkl", tail="bucket").item()
    p, q = _np_softmax(zt[0].double().numpy()), _np_softmax(zs[0].double().numpy())
    rows = []
    for i in range(2):
        sel = ids[0, i].numpy()
        pc = np.append(p[i, sel], 1 - p[i, sel].sum())
        qc = np.append(q[i, sel], 1 - q[i, sel].sum())
        rows.append(_np_kl(pc, qc))
    assert got == pytest.approx(float(np.mean(rows)), rel=1e-5)


def test_sparse_bucket_survives_a_teacher_top_k_that_rounds_to_mass_one():
    zs = _logits(1, 1, 6, seed=120).requires_grad_()
    ids = torch.tensor([[[0, 1]]])
    lps = torch.tensor([[[-1e-9, -25.0]]])  # Σp rounds to 1: the teacher tail would be exactly 0
    loss = sparse_kd_loss(zs, ids, lps, None, "rkl", tail="bucket")
    (g,) = _grads(loss, [zs])
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_sparse_rejects_logits_and_out_of_range_ids():
    zs = _logits(1, 2, 6, seed=130)
    ids = torch.tensor([[[0, 1], [2, 3]]])
    with pytest.raises(ValueError, match="log-probabilities"):
        sparse_kd_loss(zs, ids, torch.full((1, 2, 2), 3.0), None, "fkl")
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        sparse_kd_loss(zs, ids + 3, torch.full((1, 2, 2), -2.0), None, "fkl")


# --------------------------------------------------------------------------- AKL details


def test_akl_head_is_top1_when_the_teacher_is_peaked_and_ties_join_the_head():
    from distillkit.losses.divergences import akl_head_weight

    log_p = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.4]]))
    log_q = torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]]))
    w = akl_head_weight(log_q, log_p, 0.5)
    # Row 0: head {0}: g_head = .3, g_tail = .3. Row 1: cumsum .4 ≤ .5 < .6 -> head {3}: .15 / (.15 + .15).
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5]))
    w_ties = akl_head_weight(log_q[1:], torch.log(torch.tensor([[0.3, 0.3, 0.3, 0.1]])), 0.5)
    # cumsum .3 ≤ .5 -> threshold .3: all three tied entries join the head; g_head = .15, g_tail = .15.
    torch.testing.assert_close(w_ties, torch.tensor([0.5]))


# --------------------------------------------------------------------------- TAID schedule


def test_taid_schedule_follows_the_update_rule():
    s = TaidSchedule(t_start=0.4, t_end=1.0, alpha=0.1, beta=0.5)
    assert s.t == 0.4
    assert s.update(2.0, step=0, total_steps=100) == 0.4  # first call only records the loss
    # δ = (2 − 1)/2 = .5; m = .5·0 + .5·.5 = .25; Δ = .1·σ(.25)·(1 − .4); linear floor at step 1 = .406.
    want = 0.4 + 0.1 * (1 / (1 + math.exp(-0.25))) * 0.6
    assert s.update(1.0, step=1, total_steps=100) == pytest.approx(want)
    assert s.momentum == pytest.approx(0.25)


def test_taid_schedule_is_monotone_reaches_t_end_and_resumes_from_state_dict():
    s = TaidSchedule()
    losses = [5.0 * 0.99**i for i in range(200)]
    ts = [s.update(x, i, 200) for i, x in enumerate(losses[:120])]
    assert all(b >= a for a, b in zip(ts, ts[1:]))
    state = s.state_dict()
    resumed = TaidSchedule()
    resumed.load_state_dict(state)
    rest_a = [s.update(x, i, 200) for i, x in enumerate(losses[120:], start=120)]
    rest_b = [resumed.update(x, i, 200) for i, x in enumerate(losses[120:], start=120)]
    assert rest_a == rest_b
    assert s.update(losses[-1], 200, 200) == 1.0
    with pytest.raises(ValueError, match="alpha"):
        TaidSchedule(alpha=1e-3).load_state_dict(state)


def test_taid_loss_uses_the_schedule_t_and_reduces_to_fkl_at_t_1():
    zs, zt = _logits(1, 3, 5, seed=140), _logits(1, 3, 5, seed=141)
    assert kd_loss(zs, zt, None, "taid", t=1.0).item() == pytest.approx(kd_loss(zs, zt, None, "fkl").item(), rel=1e-6)
    assert kd_loss(zs, zt, None, "taid", t=0.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(zs, zt, None, "taid", t=torch.tensor(TaidSchedule().t)).item() > 0


# --------------------------------------------------------------------------- errors


def test_errors_say_what_is_wrong_and_what_exists():
    zs, zt = _logits(1, 2, 5, seed=150), _logits(1, 2, 7, seed=151)
    with pytest.raises(ValueError, match="choose one of fkl, rkl"):
        kd_loss(zs, zs, None, "kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accepts beta"):
        kd_loss(zs, zs, None, "jsd", alpha=0.1)
    with pytest.raises(ValueError, match="needs t="):
        kd_loss(zs, zs, None, "taid")
    with pytest.raises(ValueError, match="pass vocab_size="):
        kd_loss(zs, zt, None, "fkl")
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(zs, zs, None, "fkl", temperature=0.0)
    assert torch.isfinite(kd_loss(zs, zt, None, "fkl", vocab_size=5))


def test_jeffreys_known_value_and_it_trains_through_every_path():
    """The proof that a divergence is one function + one registration: jeffreys = KL(p‖q) + KL(q‖p), hand-computed on
    a 2-token support, reachable as train's --loss choice, with gradients on the dense path."""
    import math

    from distillkit.losses.registry import DIVERGENCES as NAMES, choices_help

    p, q = torch.tensor([[0.75, 0.25]]), torch.tensor([[0.5, 0.5]])
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5) + 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    from distillkit.losses.divergences import jeffreys_rows

    assert float(jeffreys_rows(q.log(), p.log())[0]) == pytest.approx(want, rel=1e-6)
    assert "jeffreys" in NAMES and "jeffreys" in choices_help()
    from distillkit.pipelines.train_config import TrainConfig

    assert TrainConfig(plan="p", teacher="t", student="s", out="o", loss="jeffreys").validate() == []
