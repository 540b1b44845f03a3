"""Knowledge-distillation losses: the registered divergences (`distillkit.losses.registry`), dense /
chunked-fused / sparse top-k.

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

The registry's names (`DIVERGENCES`, `Divergence`) import without torch; every other name here loads its
module, and torch with it, on first use (so the command line's start-up and the configs stay torch-free).
"""

import sys
import types

from distillkit.losses.registry import DIVERGENCES, Divergence

# name -> the module of distillkit.losses that defines it (imported on first use: they import torch)
_LAZY = {
    "kd_loss": "dense",
    "LinearHead": "fused",
    "TeacherLogitsFn": "fused",
    "chunked_kd_and_ce": "fused",
    "chunked_kd_ce_objective": "fused",
    "chunked_kd_loss": "fused",
    "LossSpec": "objective",
    "Teacher": "objective",
    "TopKTeacher": "objective",
    "heldout_sums": "objective",
    "objective": "objective",
    "TailMode": "sparse",
    "sparse_kd_loss": "sparse",
    "TaidSchedule": "taid",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import distillkit.losses.dense
    import distillkit.losses.fused
    import distillkit.losses.objective
    import distillkit.losses.sparse
    import distillkit.losses.taid  # noqa: F401 (every module above; _LAZY says which defines the name)

    value = getattr(sys.modules[f"{__name__}.{_LAZY[name]}"], name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Loading a submodule binds its name on the package, and `objective` is both a submodule and the function
        # exported here: whichever import loads the submodule first, the name stays the function's.
        if not (isinstance(value, types.ModuleType) and name in _LAZY):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["DIVERGENCES", "Divergence", *sorted(_LAZY, key=str.lower)]
