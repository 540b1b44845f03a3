"""Sparse (offline top-k) teachers: stored top-k ids and log-probs instead of full logits.

The teacher's distribution is known only on its k ids; the remaining mass
1 − Σ_topk p is handled explicitly, one of two ways (`tail=`):

- "renorm": restrict both sides to the k ids and renormalise: p_i / Σ_topk p and
  q_i / Σ_topk q. The tail is dropped; the student is not told how much mass the
  teacher put elsewhere.
- "bucket" (default): a (k+1)-th entry holds the tail: 1 − Σ_topk p for the teacher
  and the student's exact mass outside the k ids (a logsumexp over the other
  logits). This is the divergence of the two distributions coarsened to
  {id_1, ..., id_k, everything else}; for KLs it is a lower bound on the full one.
  Both tail entries are floored at `tail_floor` (default 1e-6) and the vectors
  renormalised: stored top-k log-probs rounded to sum to ≥ 1 would otherwise give a
  zero teacher tail and an infinite reverse KL.

Temperature: stored log-probs are log softmax(z_T) at T = 1, and the tempered
distribution softmax(z_T / T) needs the logits of every token, so it can only be
approximated: we divide the top-k log-probs by T and renormalise over the k ids.
That equals the true tempered teacher *conditioned on the support* (exact at
k = V), not its tempered tail mass, which is unknown. In "bucket" mode the top-k
entries are renormalised to their T = 1 total mass and the tail bucket keeps its
T = 1 mass (tempering it like one token would blow rounding noise of ~1e-7 up to
1e-7 ** (1/T)). The student's support vector is built from its own T = 1
distribution and transformed the same way, so the loss is still minimised exactly
when the student's coarsened distribution matches the teacher's. The result is
multiplied by T², as in the dense losses.

With k = V (every id stored), both modes equal the dense loss (up to the floor in
"bucket" mode, a relative 1e-6). All eight divergences are defined on the support;
AKL's head/tail split and TAID's interpolation then act on the k (+1) entries.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from distillkit.losses.dense import common_vocab, flat_mask
from distillkit.losses.divergences import LOG_ZERO, Divergence, check_temperature, divergence_rows, resolve_params
from distillkit.losses.fused import LinearHead, fused_head_losses

TailMode = Literal["bucket", "renorm"]
TAIL_MODES: tuple[str, ...] = ("bucket", "renorm")


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x ≤ 0, accurate on both sides of −log 2; x ≥ 0 gives log 0 (as LOG_ZERO)."""
    x = x.clamp(max=0.0)
    out = torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp(min=LOG_ZERO)


def _temper(log_v: Tensor, temperature: float) -> Tensor:
    """Rescale by 1/T and renormalise over the support."""
    return torch.log_softmax(log_v / temperature if temperature != 1.0 else log_v, dim=1)


def _temper_keeping_tail(log_v: Tensor, temperature: float) -> Tensor:
    """Temper the top-k entries within their own mass; the tail bucket (last entry) keeps its T = 1 mass.

    Tempering the bucket like a token would turn rounding noise in 1 − Σ top-k p
    (~1e-7) into real mass (1e-7 ** (1/T)); keeping it fixed leaves it noise.
    """
    head, tail = log_v[:, :-1], log_v[:, -1:]
    if temperature != 1.0:
        head = torch.log_softmax(head / temperature, dim=1) + torch.logsumexp(head, dim=1, keepdim=True)
    return torch.log_softmax(torch.cat([head, tail], dim=1), dim=1)


def _floor_tail(log_v: Tensor, log_floor: float) -> Tensor:
    """Raise the last (tail) entry to ≥ log_floor, then renormalise."""
    head, tail = log_v[:, :-1], log_v[:, -1:]
    return torch.log_softmax(torch.cat([head, tail.clamp(min=log_floor)], dim=1), dim=1)


def sparse_rows(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    kind: str,
    temperature: float,
    params: dict[str, float],
    tail: str,
    tail_floor: float,
) -> Tensor:
    """[n, V] student logits, [n, k] teacher ids/log-probs -> [n] fp32 loss (T² included)."""
    z = student_logits.float()
    ids = topk_ids.long()
    lp = topk_logprobs.detach().float()
    if tail == "renorm":
        # Student logits and teacher log-probs differ from the renormalised log-probs by a per-row constant.
        log_q, log_p = _temper(z.gather(1, ids), temperature), _temper(lp, temperature)
    else:
        lse = torch.logsumexp(z, dim=1, keepdim=True)
        # A finite stand-in for -inf keeps logsumexp's gradient finite when the k ids cover V.
        rest = z.scatter(1, ids, LOG_ZERO)
        log_q = torch.cat([z.gather(1, ids), torch.logsumexp(rest, dim=1, keepdim=True)], dim=1) - lse
        log_p = torch.cat([lp, _log1mexp(torch.logsumexp(lp, dim=1, keepdim=True))], dim=1)
        log_q, log_p = _temper_keeping_tail(log_q, temperature), _temper_keeping_tail(log_p, temperature)
        if tail_floor > 0:
            log_floor = math.log(tail_floor)
            log_q, log_p = _floor_tail(log_q, log_floor), _floor_tail(log_p, log_floor)
    rows = divergence_rows(log_q, log_p, kind, params)
    return rows * (temperature * temperature) if temperature != 1.0 else rows


def sparse_kd_loss(
    student: Tensor | LinearHead,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    mask: Tensor | None = None,
    kind: Divergence = "fkl",
    *,
    temperature: float = 1.0,
    tail: TailMode = "bucket",
    vocab_size: int | None = None,
    chunk_size: int = 1024,
    tail_floor: float = 1e-6,
    **params: float,
) -> Tensor:
    """Distillation loss against a stored top-k teacher; mean over unmasked positions.

    Args:
        student: logits [B, L, V_s] (plain path), or LinearHead(hidden [B, L, H],
            weight [V_s, H], bias) for the chunked LM-head-fused path (`chunk_size`
            positions of logits at a time; gradients reach hidden, weight and bias).
        topk_ids: [B, L, k] integer ids in [0, vocab_size), distinct per position.
        topk_logprobs: [B, L, k] the teacher's log-probabilities (log softmax over the
            full vocabulary at T = 1) of those ids.
        mask, kind, temperature, **params: as in `kd_loss` (T² rule included).
        tail: "bucket" or "renorm" -- how the mass outside the k ids is handled (module doc).
        vocab_size: the student's first vocab_size logits are the vocabulary (padded heads).
        tail_floor: lower bound on both tail buckets ("bucket" mode), 0 to disable.
    """
    params_ = resolve_params(kind, params)
    temperature = check_temperature(temperature)
    if tail not in TAIL_MODES:
        raise ValueError(f"tail={tail!r}; choose 'bucket' (keep a tail-mass entry) or 'renorm' (renormalise top-k)")
    if not 0.0 <= tail_floor < 1.0:
        raise ValueError(f"tail_floor must be in [0, 1), got {tail_floor}")
    fused = isinstance(student, LinearHead)
    lead = tuple((student.hidden if fused else student).shape[:-1])
    rows_total = student.weight.shape[0] if fused else student.shape[-1]
    vocab = common_vocab(rows_total, None, vocab_size)
    if topk_ids.shape != topk_logprobs.shape or tuple(topk_ids.shape[:-1]) != lead:
        raise ValueError(
            f"topk_ids {tuple(topk_ids.shape)} and topk_logprobs {tuple(topk_logprobs.shape)} must both be "
            f"{lead} + (k,) to match the student's positions"
        )
    if topk_ids.dtype.is_floating_point or topk_ids.dtype == torch.bool:
        raise ValueError(f"topk_ids must be an integer tensor, got {topk_ids.dtype}")
    device = (student.hidden if fused else student).device
    keep = flat_mask(mask, lead, device)
    k = topk_ids.shape[-1]
    ids = topk_ids.reshape(-1, k).to(device)
    lps = topk_logprobs.reshape(-1, k).to(device)
    _check_topk(ids[keep], lps[keep], vocab, tail)

    def kd_rows(z: Tensor, pos: Tensor) -> Tensor:
        return sparse_rows(z, ids[pos], lps[pos], kind, temperature, params_, tail, tail_floor)

    if fused:
        hidden = student.hidden.reshape(-1, student.hidden.shape[-1])
        kd, _ = fused_head_losses(hidden, student.weight, student.bias, keep, kd_rows, vocab_size=vocab,
                                  chunk_size=chunk_size)
        return kd
    logits = student.reshape(-1, student.shape[-1])[keep, :vocab]
    rows = sparse_rows(logits, ids[keep], lps[keep], kind, temperature, params_, tail, tail_floor)
    return rows.sum() / max(int(keep.sum()), 1)


def _check_topk(ids: Tensor, lps: Tensor, vocab: int, tail: str) -> None:
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"topk_ids must be in [0, {vocab}) (vocab_size), found {lo}..{hi}")
    if tail == "bucket":
        mass = float(torch.logsumexp(lps.float(), dim=-1).max().exp())
        if mass > 1.01:
            raise ValueError(
                f"topk_logprobs sum to {mass:.3f} > 1 at some position: pass log-probabilities "
                "(log_softmax over the full vocabulary), not logits, or use tail='renorm'"
            )
