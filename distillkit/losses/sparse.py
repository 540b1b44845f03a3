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

Sampled teachers (`sampled_kd_loss`, ``score --teacher-store sampled``, `distillkit.sampled_store`): per
position n tokens x_1..x_n drawn from the teacher's T = 1 distribution p, with log p(x_j). The loss is
the sample mean (1/n)·Σ_j f(x_j) of a function whose expectation under p is the divergence, so value and
gradient are unbiased; only divergences that are such an expectation qualify (`SAMPLED_KINDS`):

- fkl: KL(p‖q) = E_p[log p − log q];
- skl: KL(p ‖ αp + (1−α)q) = E_p[log p − log(α·p + (1−α)·q)] (needs p only at the drawn token; the
  term is at most −log α, so its variance is bounded).

Refused: rkl, srkl, jsd and tvd are expectations under q (or need |p − q| at every token): the plug-in
divergence on the drawn support is biased, and the importance-weighted rewrite E_p[f(q/p)] is unbiased
but its weight q/p is unbounded exactly where these losses act (student mass on tokens the teacher
rarely emits, which n draws almost never contain). akl needs the teacher's head/tail split of the whole
vocabulary, taid the normaliser of softmax((1−t)·z_S + t·z_T) over it. T ≠ 1 is refused as well: the
tempered teacher p^(1/T)/Z_T needs Z_T = Σ p^(1/T) over the whole vocabulary, and self-normalised
importance weights are biased.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from distillkit.losses.dense import common_vocab, flat_mask
from distillkit.losses.divergences import LOG_ZERO, _log_mix, check_temperature, divergence_rows
from distillkit.losses.fused import LinearHead, fused_head_losses
from distillkit.losses.registry import Divergence, resolve_params

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


# ---------------------------------------------------------------- sampled teachers

SAMPLED_KINDS: tuple[str, ...] = ("fkl", "skl")


def sampled_problem(kind: str, temperatures=(1.0,)) -> str | None:
    """Why a sampled teacher cannot train `kind` at these temperatures, in one line; None when it can."""
    if kind not in SAMPLED_KINDS:
        return (f"loss {kind!r} has no unbiased estimate from the teacher's sampled tokens (they estimate expectations "
                f"under the teacher only): with a sampled teacher store use --loss {' or '.join(SAMPLED_KINDS)}, or rescore "
                "with --teacher-store topk")
    other = sorted({float(t) for t in temperatures} - {1.0})
    if other:
        return (f"the sampled teacher store holds draws from the T = 1 teacher, but training asks for T = "
                f"{', '.join(f'{t:g}' for t in other)}: set --temperature 1, or rescore with --teacher-store topk")
    return None


def sampled_rows(student_logits: Tensor, sample_ids: Tensor, sample_logprobs: Tensor, kind: str,
                 params: dict[str, float]) -> Tensor:
    """[n, V] student logits, [n, s] drawn ids and the teacher's log p of each -> [n] fp32 estimates.

    Each of the s draws has weight 1/s (a token drawn twice appears twice)."""
    z = student_logits.float()
    log_q = z.gather(1, sample_ids.long()) - torch.logsumexp(z, dim=1, keepdim=True)
    lp = sample_logprobs.detach().float()
    if kind == "fkl":
        return (lp - log_q).mean(1)
    return (lp - _log_mix(lp, log_q, params["alpha"])).mean(1)


@torch.no_grad()
def sampled_fkl_rows_and_grad(student_logits: Tensor, sample_ids: Tensor, sample_logprobs: Tensor) -> tuple[Tensor, Tensor]:
    """`sampled_rows(..., "fkl")` with its logit gradient in closed form: softmax(z) − (1/s)·Σ_j e_{x_j}."""
    z = student_logits.float()
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    ids = sample_ids.long()
    rows = (sample_logprobs.float() - (z.gather(1, ids) - lse)).mean(1)
    grad = z.sub(lse).exp_()
    grad.scatter_add_(1, ids, torch.full(ids.shape, -1.0 / ids.shape[1], dtype=grad.dtype, device=grad.device))
    return rows, grad


def check_sampled(kind: str, temperature: float) -> None:
    """ValueError (one line) unless a sampled teacher gives an unbiased `kind` at `temperature`."""
    problem = sampled_problem(kind, (temperature,))
    if problem:
        raise ValueError(problem)


def sampled_kd_loss(
    student: Tensor | LinearHead,
    sample_ids: Tensor,
    sample_logprobs: Tensor,
    mask: Tensor | None = None,
    kind: Divergence = "fkl",
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int = 1024,
    **params: float,
) -> Tensor:
    """Unbiased estimate of the divergence from a sampled teacher; mean over unmasked positions.

    Args:
        student: logits [B, L, V_s] (plain path) or LinearHead(hidden, weight, bias) (chunked, fused).
        sample_ids: [B, L, s] ids drawn from the teacher's T = 1 distribution (repeats allowed: a token
            drawn c times appears c times), in [0, vocab_size).
        sample_logprobs: [B, L, s] the teacher's log-probability (full vocabulary, T = 1) of each draw.
        mask: [B, L] positions in the mean (None = all).
        kind: "fkl" or "skl" (`SAMPLED_KINDS`; the others raise ValueError, see the module doc).
        temperature: must be 1 (the draws are from the T = 1 teacher).
        vocab_size, chunk_size: as in `sparse_kd_loss`.
    """
    params_ = resolve_params(kind, params)
    check_sampled(kind, check_temperature(temperature))
    fused = isinstance(student, LinearHead)
    lead = tuple((student.hidden if fused else student).shape[:-1])
    vocab = common_vocab(student.weight.shape[0] if fused else student.shape[-1], None, vocab_size)
    if sample_ids.shape != sample_logprobs.shape or tuple(sample_ids.shape[:-1]) != lead:
        raise ValueError(f"sample_ids {tuple(sample_ids.shape)} and sample_logprobs {tuple(sample_logprobs.shape)} must both "
                         f"be {lead} + (s,) to match the student's positions")
    if sample_ids.dtype.is_floating_point or sample_ids.dtype == torch.bool:
        raise ValueError(f"sample_ids must be an integer tensor, got {sample_ids.dtype}")
    device = (student.hidden if fused else student).device
    keep = flat_mask(mask, lead, device)
    s = sample_ids.shape[-1]
    ids = sample_ids.reshape(-1, s).to(device)
    lps = sample_logprobs.reshape(-1, s).to(device)
    kept = ids[keep]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= vocab):
        raise ValueError(f"sample_ids must be in [0, {vocab}) (vocab_size), found {int(kept.min())}..{int(kept.max())}")
    if fused:
        hidden = student.hidden.reshape(-1, student.hidden.shape[-1])
        kd, _ = fused_head_losses(hidden, student.weight, student.bias, keep, sampled_teacher_rows(ids, lps, kind, params_),
                                  vocab_size=vocab, chunk_size=chunk_size, kd_rows_grad=sampled_teacher_grad(ids, lps, kind))
        return kd
    logits = student.reshape(-1, student.shape[-1])[keep, :vocab]
    return sampled_rows(logits, kept, lps[keep], kind, params_).sum() / max(int(keep.sum()), 1)


def sampled_teacher_rows(ids: Tensor, lps: Tensor, kind: str, params: dict[str, float]):
    """The fused path's per-chunk rows (student logits [c, V], flat positions [c]) -> [c] of a sampled teacher
    whose flat [N, s] draws are `ids` and `lps`."""
    return lambda z, pos: sampled_rows(z, ids[pos], lps[pos], kind, params)


def sampled_teacher_grad(ids: Tensor, lps: Tensor, kind: str):
    """The closed-form (rows, d rows / d logits) for fkl, else None (autograd per chunk)."""
    if kind != "fkl":
        return None
    return lambda z, pos: sampled_fkl_rows_and_grad(z, ids[pos], lps[pos])
