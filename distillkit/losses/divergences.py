"""Per-position divergences between a teacher p and a student q, in fp32 log space.

Everything here works on *normalised log-probabilities over one support* (the
vocabulary for dense teachers, the top-k ids (+ a tail bucket) for sparse ones),
shape [n, S] -> [n]. Temperature and the T² factor are applied by `tempered_rows`
(dense) and `distillkit.losses.sparse` (sparse), so each formula exists once. Each
divergence is one function `NAME_rows(log_q, log_p, **params)`, found by the name its
registration in `distillkit.losses.registry` gives.

Conventions that keep the math finite where it is finite:
- 0·log 0 = 0: an entry whose weight (the left argument of a KL) has probability
  0, including one that underflowed, contributes 0 and gets gradient 0;
- an entry that is -inf on both sides (a vocabulary entry both models mask)
  contributes nothing; one that is -inf only where the other side has mass is a
  genuinely infinite KL, and comes out as +inf rather than as a silent NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from distillkit.losses.registry import REGISTRY, registered

# Stand-in for log 0 inside mixtures: finite, so -inf - -inf never makes a NaN.
LOG_ZERO = -1e30
# Rows per block when AKL sorts teacher probabilities (bounds the sort's memory).
_AKL_SORT_ROWS = 256


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return t


def kl_rows(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a‖b) per row = Σ a·(log a − log b), with 0·log 0 = 0 (value and gradient)."""
    a = log_a.exp()
    diff = torch.where(a > 0, log_a - log_b, 0.0)
    return (a * diff).sum(-1)


def _finite(log_x: Tensor) -> Tensor:
    return log_x.clamp(min=LOG_ZERO)


def _log_mix(log_x: Tensor, log_y: Tensor, wx: float) -> Tensor:
    """log(wx·x + (1 − wx)·y), exact at wx ∈ {0, 1}."""
    if wx == 0.0:
        return log_y
    if wx == 1.0:
        return log_x
    return torch.logaddexp(_finite(log_x) + math.log(wx), _finite(log_y) + math.log1p(-wx))


def _zero_rows(log_q: Tensor) -> Tensor:
    """Zeros that stay attached to the student's graph (so backward gives zero grads, not an error)."""
    return (_finite(log_q) * 0.0).sum(-1)


def fkl_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl_rows(log_p, log_q)


def rkl_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl_rows(log_q, log_p)


def skl_rows(log_q: Tensor, log_p: Tensor, alpha: float) -> Tensor:
    """Skew KL (DistiLLM): KL(p ‖ αp + (1−α)q)."""
    return kl_rows(log_p, _log_mix(log_p, log_q, alpha))


def srkl_rows(log_q: Tensor, log_p: Tensor, alpha: float) -> Tensor:
    """Skew reverse KL: KL(q ‖ (1−α)p + αq)."""
    return kl_rows(log_q, _log_mix(log_p, log_q, 1.0 - alpha))


def jsd_rows(log_q: Tensor, log_p: Tensor, beta: float) -> Tensor:
    """β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q; at the ends, GKD's convention: β = 0 is forward KL(p‖q),
    β = 1 reverse KL(q‖p).

    The formula itself vanishes at both ends (m becomes q or p); GKD (Agarwal et al.) and TRL's
    `generalized_jsd_loss` define β = 0 / 1 as the forward / reverse KL instead, and users port those
    settings, so a β of 0 or 1 trains with that KL rather than with a silent zero. Inside (0, 1) the
    value is the formula (JSD_β ≈ β·KL(p‖q) near 0, so it is discontinuous at the ends, as in TRL).
    """
    if beta == 0.0:
        return kl_rows(log_p, log_q)
    if beta == 1.0:
        return kl_rows(log_q, log_p)
    log_m = _log_mix(log_p, log_q, beta)
    return beta * kl_rows(log_p, log_m) + (1.0 - beta) * kl_rows(log_q, log_m)


def jeffreys_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    """Jeffreys divergence, the symmetrised KL: KL(p‖q) + KL(q‖p)."""
    return kl_rows(log_p, log_q) + kl_rows(log_q, log_p)


def tvd_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


@torch.no_grad()
def akl_head_weight(log_q: Tensor, log_p: Tensor, mu: float) -> Tensor:
    """AKL's per-row weight on FKL: g_head / (g_head + g_tail), no gradient.

    Head = the teacher's highest-probability entries whose cumulative probability
    stays ≤ mu, and always at least the top one (as in Wu et al.'s code). It is
    taken as {p ≥ threshold}, so ties at the threshold all join the head and the
    split does not depend on the order of the support. Gaps are Σ|p − q| over
    head and tail; a row with p = q everywhere gets weight 0.5 (both KLs are 0).
    """
    out = []
    for i in range(0, log_p.shape[0], _AKL_SORT_ROWS):
        p = log_p[i : i + _AKL_SORT_ROWS].exp()
        q = log_q[i : i + _AKL_SORT_ROWS].exp()
        sorted_p = p.sort(dim=-1, descending=True).values
        n_head = (sorted_p.cumsum(-1) <= mu).sum(-1).clamp(min=1)
        threshold = sorted_p.gather(-1, (n_head - 1).unsqueeze(-1))
        del sorted_p
        err = (p - q).abs()
        g_head = torch.where(p >= threshold, err, 0.0).sum(-1)
        g_all = err.sum(-1)
        out.append(torch.where(g_all > 0, g_head / g_all.clamp(min=1e-30), 0.5))
    if not out:
        return log_p.new_zeros(0)
    return torch.cat(out)


def akl_rows(log_q: Tensor, log_p: Tensor, mu: float) -> Tensor:
    w_head = akl_head_weight(log_q, log_p, mu)
    return w_head * kl_rows(log_p, log_q) + (1.0 - w_head) * kl_rows(log_q, log_p)


def taid_rows(log_q: Tensor, log_p: Tensor, t: float) -> Tensor:
    """KL(p_t‖q), p_t = softmax((1−t)·stopgrad(log q) + t·log p).

    Interpolating log-probabilities equals interpolating logits: the two differ
    by a per-row constant, which the softmax removes.
    """
    if t == 1.0:
        log_pt = log_p
    elif t == 0.0:
        log_pt = log_q.detach()
    else:
        log_pt = torch.log_softmax((1.0 - t) * _finite(log_q.detach()) + t * _finite(log_p), dim=-1)
    return kl_rows(log_pt, log_q)


# Each registered divergence's function, bound by name once (a registration without its function fails here).
_ROWS = {d.name: globals()[d.rows] for d in REGISTRY}


def divergence_rows(log_q: Tensor, log_p: Tensor, kind: str, params: dict[str, float]) -> Tensor:
    """Per-row divergence of student log q from teacher log p ([n, S] fp32 -> [n]), without T²: the function
    `kind` is registered with, given its parameters from `params` (resolved: `registry.resolve_params`)."""
    reg = registered(kind)
    return _ROWS[reg.name](log_q, log_p, **{p.name: params[p.name] for p in reg.params})


def tempered_rows(
    student_logits: Tensor, teacher_logits: Tensor, kind: str, temperature: float, params: dict[str, float]
) -> Tensor:
    """[n, V] logits (any float dtype) -> [n] fp32 loss: T² · D(softmax(z_T/T), softmax(z_S/T)).

    The teacher is detached: it never receives gradients.
    """
    s = student_logits.float()
    t = teacher_logits.detach().float()
    if temperature != 1.0:
        s = s / temperature
        t = t / temperature
    log_q = torch.log_softmax(s, dim=-1)
    log_p = torch.log_softmax(t, dim=-1)
    rows = divergence_rows(log_q, log_p, kind, params)
    return rows * (temperature * temperature) if temperature != 1.0 else rows


@torch.no_grad()
def fkl_rows_and_grad(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Forward KL with its logit gradient in closed form: no autograd graph, fewer [n, V] passes.

    rows = T² · Σ p (log p − log q) and d rows / d z_S = T · (q − p), with p = softmax(z_T/T),
    q = softmax(z_S/T) (the gradient of `tempered_rows(..., "fkl", ...)`, 0·log 0 = 0 included).
    Neither input is modified.
    """
    s = student_logits.float()
    t = teacher_logits.float()
    if temperature != 1.0:
        s = s / temperature
        t = t / temperature
    log_q = torch.log_softmax(s, dim=-1)
    log_p = torch.log_softmax(t, dim=-1)
    p = log_p.exp()
    diff = log_p.sub_(log_q).masked_fill_(p == 0, 0.0)  # log p − log q, 0 where p = 0 (log p may be −inf)
    rows = diff.mul_(p).sum(-1)
    grad = log_q.exp_().sub_(p)
    if temperature != 1.0:
        rows.mul_(temperature * temperature)
        grad.mul_(temperature)
    return rows, grad
