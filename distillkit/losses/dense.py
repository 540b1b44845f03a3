"""The plain path: full [B, L, V] student and teacher logits in, one scalar out."""

from __future__ import annotations

import torch
from torch import Tensor

from distillkit.losses.divergences import check_temperature, tempered_rows
from distillkit.losses.registry import Divergence, resolve_params


def flat_mask(mask: Tensor | None, lead_shape: tuple[int, ...], device) -> Tensor:
    """[B, L] (bool or 0/1) mask -> flat bool [B*L]; None means every position counts."""
    n = 1
    for d in lead_shape:
        n *= d
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(lead_shape)} (the logits' [B, L])")
    return mask.reshape(-1).to(device=device, dtype=torch.bool)


def common_vocab(student_rows: int, teacher_rows: int | None, vocab_size: int | None) -> int:
    """The vocabulary both sides are compared over: `vocab_size`, or the shared row count."""
    if vocab_size is None:
        if teacher_rows is not None and teacher_rows != student_rows:
            raise ValueError(
                f"student has {student_rows} logit rows and teacher {teacher_rows} (padded vocabularies?): "
                "pass vocab_size= (the tokenizer's vocabulary size) to compare the common part"
            )
        return student_rows
    vocab_size = int(vocab_size)
    smallest = min(student_rows, teacher_rows) if teacher_rows is not None else student_rows
    if not 0 < vocab_size <= smallest:
        raise ValueError(
            f"vocab_size={vocab_size} must be in 1..{smallest} "
            f"(student has {student_rows} logit rows, teacher {teacher_rows})"
        )
    return vocab_size


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    kind: Divergence = "fkl",
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    **params: float,
) -> Tensor:
    """Distillation loss from full logits: mean over unmasked positions of T²·D(p^(T), q^(T)).

    Args:
        student_logits: [B, L, V_s] (any float dtype; computed in fp32).
        teacher_logits: [B, L, V_t]; detached (the teacher gets no gradient).
        mask: [B, L] bool/0-1, True = position counts; None = all count.
        kind: which divergence (see `Divergence`).
        temperature: T > 0. Both distributions are softmax(z / T) and the result is
            multiplied by T², so gradient magnitudes stay comparable across T (Hinton).
        vocab_size: compare only the first `vocab_size` entries (padded vocabularies);
            required when V_s != V_t.
        **params: the divergence's parameters: jsd beta=0.5; skl/srkl alpha=0.1;
            akl mu=0.5; taid t (required).

    Returns:
        fp32 scalar. A batch with no unmasked position gives 0, with zero gradients.
    """
    params_ = resolve_params(kind, params)
    temperature = check_temperature(temperature)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must agree on every dimension but the last"
        )
    vocab = common_vocab(student_logits.shape[-1], teacher_logits.shape[-1], vocab_size)
    lead = tuple(student_logits.shape[:-1])
    keep = flat_mask(mask, lead, student_logits.device)
    # Select rows first, then columns: copies only the kept positions.
    student = student_logits.reshape(-1, student_logits.shape[-1])[keep, :vocab]
    teacher = teacher_logits.reshape(-1, teacher_logits.shape[-1])[keep, :vocab]
    rows = tempered_rows(student, teacher, kind, temperature, params_)
    return rows.sum() / max(int(keep.sum()), 1)
