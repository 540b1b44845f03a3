"""The one entry point a training step calls: `objective(spec, student, labels, teacher, ...)`.

A `LossSpec` fixes what the run distils with (divergence and its parameters, how KD and CE are
mixed, plain or chunked, offline tail handling); per step only the temperature, the KD weight λ and
TAID's t change. The teacher is whatever the run's teacher source gives for a batch:

- `LinearHead` of the teacher's hidden states (online, chunked): logits a chunk at a time;
- full teacher logits [B, L, V_t] (online, plain);
- `TopKTeacher` of stored ids and log-probs (offline, either path): the teacher's top-k, or with
  ``LossSpec.store = "sampled"`` its sampled tokens (ids drawn from the T = 1 teacher, each with its log p;
  `distillkit.losses.sparse.sampled_kd_loss`: unbiased fkl / skl only, T = 1 only).

The student is always a `LinearHead` (its hidden states and LM head): the chunked path never builds
its full logits, the plain path does (for comparison and small vocabularies). Both give the same
numbers (tests/test_losses.py: dense and sparse parity, with and without a CE weight).

`heldout_sums` is the held-out measurement's counterpart: summed NLL and summed KL(teacher‖student).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from distillkit.losses.dense import kd_loss
from distillkit.losses.divergences import check_temperature
from distillkit.losses.fused import LinearHead, TeacherLogitsFn, chunked_kd_ce_objective, chunked_kd_loss, fused_head_objective
from distillkit.losses.registry import resolve_params
from distillkit.losses.sparse import (
    TailMode,
    check_sampled,
    sampled_kd_loss,
    sampled_teacher_grad,
    sampled_teacher_rows,
    sparse_kd_loss,
    sparse_rows,
)

IGNORE_INDEX = -100
TAIL_FLOOR = 1e-6  # sparse_kd_loss's default: both paths floor the tail bucket alike


@dataclass(frozen=True)
class LossSpec:
    """What a run distils with; fixed for the run."""

    kind: str  # a distillkit.losses Divergence
    params: dict[str, float]  # beta (jsd), alpha (skl/srkl), mu (akl)
    form: Literal["pocl", "additive"]  # (1-λ)·CE + λ·KD, or CE + λ·KD
    impl: Literal["chunked", "plain"]
    vocab_size: int
    chunk_size: int = 1024
    tail: TailMode = "bucket"  # offline top-k tail handling
    store: Literal["topk", "sampled"] = "topk"  # what a TopKTeacher holds: the top-k, or tokens sampled from the teacher

    def weights(self, lam: float) -> tuple[float, float]:
        """(w_kd, w_ce) of the step's objective w_kd·KD + w_ce·CE at KD weight λ."""
        return (lam, 1.0 - lam) if self.form == "pocl" else (lam, 1.0)


@dataclass(frozen=True, slots=True)
class TopKTeacher:
    """A stored (offline) teacher: its top-k ids [B, L, k] and their log-probs at T = 1."""

    ids: Tensor
    logprobs: Tensor


Teacher = LinearHead | TeacherLogitsFn | Tensor | TopKTeacher


def objective(spec: LossSpec, student: LinearHead, labels: Tensor, teacher: Teacher, *, temperature: float = 1.0,
              kd_weight: float = 1.0, params: dict[str, float] | None = None,
              ce_weight: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(objective, kd, ce) of one micro-batch: token means over positions with a label.

    objective = w_kd·kd + w_ce·ce for ``spec.weights(kd_weight)``; on the chunked path it is the
    only output with a gradient. KD and CE both count the positions whose label is not -100.
    ``params`` adds per-step divergence parameters (TAID's t) to ``spec.params``; ``ce_weight``
    replaces w_ce (0 for on-policy batches: the divergence alone).
    """
    s, vocab = spec, spec.vocab_size
    mask = labels != IGNORE_INDEX
    if teacher is None:  # no teacher (train --teacher-mode none): cross-entropy alone, kd reported as 0
        return _ce_only(s, student, labels, mask)
    params, weights = {**s.params, **(params or {})}, s.weights(kd_weight)
    if ce_weight is not None:
        weights = (weights[0], ce_weight)
    hidden, weight, bias = student.hidden, student.weight, student.bias
    if s.impl == "chunked" and not isinstance(teacher, TopKTeacher):
        return chunked_kd_ce_objective(hidden, weight, teacher, mask, labels, s.kind, weights=weights,
                                       student_bias=bias, vocab_size=vocab, temperature=temperature,
                                       chunk_size=s.chunk_size, **params)
    sampled = isinstance(teacher, TopKTeacher) and s.store == "sampled"
    if s.impl == "chunked":  # sparse KD rows and CE from the same logits chunks
        p, t = resolve_params(s.kind, params), check_temperature(temperature)
        ids = teacher.ids.reshape(-1, teacher.ids.shape[-1])
        lps = teacher.logprobs.reshape(-1, ids.shape[-1])
        rows_grad = None
        if sampled:
            check_sampled(s.kind, t)
            rows, rows_grad = sampled_teacher_rows(ids, lps, s.kind, p), sampled_teacher_grad(ids, lps, s.kind)
        else:
            def rows(z: Tensor, pos: Tensor) -> Tensor:
                return sparse_rows(z, ids[pos], lps[pos], s.kind, t, p, s.tail, TAIL_FLOOR)

        return fused_head_objective(hidden.reshape(-1, hidden.shape[-1]), weight, bias, mask.reshape(-1), rows,
                                    weights=weights, vocab_size=vocab, chunk_size=s.chunk_size, labels=labels.reshape(-1),
                                    kd_rows_grad=rows_grad)
    logits = F.linear(hidden, weight, bias)  # the plain path: full student logits
    if sampled:
        kd = sampled_kd_loss(logits, teacher.ids, teacher.logprobs, mask, s.kind, temperature=temperature,
                             vocab_size=vocab, **params)
    elif isinstance(teacher, TopKTeacher):
        kd = sparse_kd_loss(logits, teacher.ids, teacher.logprobs, mask, s.kind, temperature=temperature,
                            tail=s.tail, vocab_size=vocab, **params)
    else:
        kd = kd_loss(logits, teacher, mask, s.kind, temperature=temperature, vocab_size=vocab, **params)
    flat = logits[..., :vocab].reshape(-1, vocab).float()
    # cross_entropy over no target at all is NaN; a zero that stays on the graph keeps backward uniform
    ce = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE_INDEX) if bool(mask.any()) else flat.sum() * 0.0
    return weights[0] * kd + weights[1] * ce, kd, ce


def _ce_only(s: LossSpec, student: LinearHead, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(ce, 0, ce) without a teacher: the chunked path never holds more than chunk_size positions of logits."""
    hidden, weight, bias, vocab = student.hidden, student.weight, student.bias, s.vocab_size
    if s.impl == "chunked":
        def no_rows(z: Tensor, pos: Tensor) -> Tensor:
            return z.new_zeros(z.shape[0])

        flat = mask.reshape(-1)
        return fused_head_objective(hidden.reshape(-1, hidden.shape[-1]), weight, bias, torch.zeros_like(flat), no_rows,
                                    weights=(0.0, 1.0), vocab_size=vocab, chunk_size=s.chunk_size, labels=labels.reshape(-1))
    logits = F.linear(hidden, weight, bias)[..., :vocab].reshape(-1, vocab).float()
    ce = F.cross_entropy(logits, labels.reshape(-1), ignore_index=IGNORE_INDEX) if bool(mask.any()) else logits.sum() * 0.0
    return ce, ce.detach() * 0.0, ce


def heldout_sums(spec: LossSpec, student: LinearHead, labels: Tensor,
                 teacher: LinearHead | TopKTeacher | None = None) -> tuple[Tensor, Tensor]:
    """(summed NLL, summed KL(teacher‖student)) over positions with a label, fp64, at T = 1.

    `spec.chunk_size` positions of logits at a time; KL is 0 without a teacher. Forward KL whatever
    the run's divergence, so held-out figures compare across runs.
    """
    vocab, chunk = spec.vocab_size, spec.chunk_size
    hidden, weight, bias = student.hidden, student.weight, student.bias
    flat_h, flat_labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    pos = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
    nll = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for a in range(0, pos.numel(), chunk):
        p = pos[a : a + chunk]
        z = F.linear(flat_h[p], weight[:vocab], None if bias is None else bias[:vocab]).float()
        nll += F.cross_entropy(z, flat_labels[p], reduction="sum").double()
    kl = torch.zeros((), dtype=torch.float64, device=hidden.device)
    if teacher is not None and pos.numel():
        mask = labels != IGNORE_INDEX
        if isinstance(teacher, TopKTeacher) and spec.store == "sampled":  # the unbiased estimate of forward KL
            mean = sampled_kd_loss(student, teacher.ids, teacher.logprobs, mask, "fkl", vocab_size=vocab, chunk_size=chunk)
        elif isinstance(teacher, TopKTeacher):
            mean = sparse_kd_loss(student, teacher.ids, teacher.logprobs, mask, "fkl", tail=spec.tail, vocab_size=vocab,
                                  chunk_size=chunk)
        else:
            mean = chunked_kd_loss(hidden, weight, teacher, mask, "fkl", student_bias=bias, vocab_size=vocab, chunk_size=chunk)
        kl = mean.double() * pos.numel()
    return nll, kl


__all__ = ["LossSpec", "TopKTeacher", "Teacher", "objective", "heldout_sums", "IGNORE_INDEX"]
