"""Knowledge-distillation losses: eight divergences, dense / chunked-fused / sparse top-k.

A training step calls one function, `objective(spec, student, labels, teacher, temperature=,
kd_weight=, params=) -> (loss, kd, ce)`: the `LossSpec` picks the divergence, the KD/CE mix
(pocl or additive), plain or chunked, and the offline tail; the teacher is a `LinearHead`, full
logits, or a `TopKTeacher`. `heldout_sums` is its held-out counterpart (summed NLL and KL).

The building blocks (all return fp32 scalars, mean over unmasked positions, 0 for none):

- `kd_loss(student_logits, teacher_logits, mask, kind, temperature=1.0, **params)`: plain,
  from full [B, L, V] logits.
- `chunked_kd_loss(student_hidden, student_weight, teacher, mask, kind, ...)` and
  `chunked_kd_and_ce(...) -> (kd, ce)`: from hidden states + LM head, `chunk_size`
  positions of logits at a time; teacher = `LinearHead` or a `TeacherLogitsFn`.
- `chunked_kd_ce_objective(..., weights=(w_kd, w_ce)) -> (loss, kd, ce)`: the same for a mix fixed
  up front (a training step): one LM-head gradient pass per chunk, none for a zero weight.
- `sparse_kd_loss(student, topk_ids, topk_logprobs, mask, kind, tail=...)`: offline top-k teacher.
- `TaidSchedule`: the adaptive t for kind="taid".

Temperature rule (every divergence, every path): p = softmax(z_T / T), q = softmax(z_S / T),
loss = T² · D(p, q). See docs/losses.md.
"""

from distillkit.losses.dense import kd_loss
from distillkit.losses.divergences import DIVERGENCES, Divergence
from distillkit.losses.fused import (
    LinearHead,
    TeacherLogitsFn,
    chunked_kd_and_ce,
    chunked_kd_ce_objective,
    chunked_kd_loss,
)
from distillkit.losses.objective import LossSpec, Teacher, TopKTeacher, heldout_sums, objective
from distillkit.losses.sparse import TailMode, sparse_kd_loss
from distillkit.losses.taid import TaidSchedule

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "LinearHead",
    "LossSpec",
    "TailMode",
    "TaidSchedule",
    "Teacher",
    "TeacherLogitsFn",
    "TopKTeacher",
    "chunked_kd_and_ce",
    "chunked_kd_ce_objective",
    "chunked_kd_loss",
    "heldout_sums",
    "kd_loss",
    "objective",
    "sparse_kd_loss",
]
