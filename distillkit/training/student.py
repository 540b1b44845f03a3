"""The student with its loss inside forward, and where each batch's teacher comes from.

The loss sits inside the module's forward so that DDP and FSDP2 see the LM head used in forward
(the chunked loss reads the head's weight directly instead of calling it). The loss itself is
`distillkit.losses.objective` (training) or `heldout_sums` (held-out measurement).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from distillkit.losses import LinearHead, LossSpec, Teacher, TopKTeacher, heldout_sums, objective

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from distillkit.training.batches import Batch

TeacherSource = Callable[["Batch"], Teacher | None]
"""A batch -> what the loss compares the student with (teacher head, logits, or stored top-k)."""


class StudentLoss(nn.Module):
    """Train mode returns the micro-batch's (objective, kd, ce), token means, objective =
    w_kd·kd + w_ce·ce for ``spec.weights(kd_weight)``; eval mode (under no_grad) returns summed
    (nll, kl), KL only ``with_kl``."""

    def __init__(self, student: PreTrainedModel, spec: LossSpec) -> None:
        super().__init__()
        self.student = student
        self.spec = spec

    def forward(self, batch: Batch, teacher: Teacher | None, temperature: float = 1.0, params: dict[str, float] | None = None,
                mode: Literal["train", "eval"] = "train", with_kl: bool = False, kd_weight: float = 1.0,
                ce_weight: float | None = None) -> tuple[torch.Tensor, ...]:
        with record_function("distillkit.student_forward"):
            hidden = self.student.get_decoder()(**batch.model_inputs()).last_hidden_state
        with record_function("distillkit.loss"):
            head = self.student.get_output_embeddings()
            student = LinearHead(hidden, head.weight, getattr(head, "bias", None))
            if mode == "eval":
                return heldout_sums(self.spec, student, batch.labels, teacher if with_kl else None)
            return objective(self.spec, student, batch.labels, teacher, temperature=temperature, kd_weight=kd_weight,
                             params=params, ce_weight=ce_weight)


def teacher_sources(teacher: PreTrainedModel | None, impl: str) -> tuple[TeacherSource, TeacherSource]:
    """(train source, eval source). Online: the teacher's LinearHead (chunked, and always for held-out
    KL) or its full logits (plain); offline (no teacher model): the batch's stored top-k."""
    if teacher is None:
        return stored_topk, stored_topk
    decoder, head = teacher.get_decoder(), teacher.get_output_embeddings()

    def linear_head(batch: Batch) -> LinearHead:
        with torch.no_grad():
            hidden = decoder(**batch.model_inputs()).last_hidden_state
        return LinearHead(hidden, head.weight, getattr(head, "bias", None))

    def logits(batch: Batch) -> torch.Tensor:
        h = linear_head(batch)
        with torch.no_grad():
            return F.linear(h.hidden, h.weight, h.bias)

    return (linear_head if impl == "chunked" else logits), linear_head


def stored_topk(batch: Batch) -> TopKTeacher | None:
    """The offline teacher: the top-k the batch was collated with (None when it was collated without)."""
    return None if batch.topk_ids is None else TopKTeacher(batch.topk_ids, batch.topk_logprobs)


__all__ = ["StudentLoss", "TeacherSource", "teacher_sources", "stored_topk"]
