"""The train recipe's typed inputs and the pieces it assembles the loop from: `Inputs` (what
`distillkit.pipelines.train.prepare` loaded and checked), the student's compute precision (`precision_choice`),
the peak learning rate (`lr_choice`), the optimizer (`adamw`), the checkpoint to resume, and the held-out
before/after report.

`distillkit/pipelines/train.py` reads the recipe top to bottom: `prepare` (-> `Inputs`) -> `make_settings`
(-> `parts.Settings`) -> `make_components` (-> `parts.Components`) -> `initial_state` (-> `TrainState`)
-> `loop.train` -> `finish`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from distillkit.artifacts import Artifact
    from distillkit.records import PlanRecord
    from distillkit.training.batches import Sequences, TopKStore
    from distillkit.training.components import Components, Settings
    from distillkit.training.state import TrainState


@dataclass(frozen=True)
class Inputs:
    """What `distillkit.pipelines.train.prepare` loaded and checked (before the output is touched)."""

    plan: Artifact
    scores: Artifact
    schedule: PlanRecord  # the plan's stages, stage length, optimizer restarts and mixture settings
    tokenizer: PreTrainedTokenizerBase
    student: PreTrainedModel  # trainable fp32 model on this rank's device
    teacher: PreTrainedModel | None  # frozen model (online) or None (offline)
    vocab_size: int
    seqs: Sequences  # training rows (curriculum order) first, then held-out rows
    domain_codes: np.ndarray  # [training rows] index into `domains`
    stages: np.ndarray  # [training rows] curriculum stage
    domains: list[str]
    plan_weights: np.ndarray  # [domains] the plan's mixture weights
    teacher_ppl: np.ndarray  # [domains] as scored
    student_ppl: np.ndarray  # [domains] as scored
    heldout_rows: list[list[int]]  # per domain, rows of `seqs`
    heldout_source: list[str]  # per domain: "validation" or "train" (no held-out docs)
    topk: TopKStore | None  # the offline teacher's stored top-k
    pad_id: int
    identity: dict[str, str] = field(default_factory=dict)  # fingerprints that join the artifact's identity
    data_format: str = "text"  # "text" or "instruction" (prompt/response)
    student_dir: str = ""  # the student's HF directory (a separate generation engine loads it from there)
    dev_rows: list[list[int]] = field(default_factory=list)  # per domain, rows of `seqs` that in-run decisions read
    test_teacher_ppl: np.ndarray | None = None  # [domains] the scored teacher on the test slice (the report's column)
    teacher_provenance: dict[str, Any] | None = None  # a corrected teacher's train artifact (models.corrected_teacher)

    @property
    def with_kl(self) -> bool:
        """A teacher to measure held-out KL against: the online model or the stored top-k."""
        return self.teacher is not None or self.topk is not None


def precision_choice(precision: str, device: str) -> tuple[torch.dtype | None, str]:
    """The student forward's autocast dtype (None: fp32) and why, for `precision` auto / fp32 / bf16.

    auto picks bf16 where the hardware runs it natively: a CUDA GPU with bf16, or a CPU with avx512_bf16 /
    amx_bf16 (there a 110M student's forward + backward is about 2x faster); elsewhere fp32, because
    emulated bf16 on an AVX2-only CPU is many times slower. Weights, optimizer and loss reductions stay fp32.
    """
    import torch

    from distillkit.models import bf16_supported

    if precision == "fp32":
        return None, "fp32 (precision = fp32)"
    if precision == "bf16":
        return torch.bfloat16, "bf16 autocast (precision = bf16)"
    cuda = str(device).startswith("cuda")
    if bf16_supported(device):
        return torch.bfloat16, ("bf16 autocast (auto: the GPU supports bf16)" if cuda
                                else "bf16 autocast (auto: the CPU has native bf16, avx512_bf16/amx_bf16)")
    return None, ("fp32 (auto: the GPU has no bf16)" if cuda
                  else "fp32 (auto: the CPU has no native bf16; emulated bf16 would be slower)")


# The learning rate by the student's state, when --lr is not given (docs/train.md, "Starting from a trained
# student"): measured on tiny models, 1e-4 heals a pruned student ~7x faster than 1e-5, but makes a trained
# one's held-out KL rise from the first steps, where 1e-5 keeps it flat. The state is read off the scores: the
# geometric mean over domains of student / teacher perplexity (pruned: 2.5-19; trained: 1.2-1.8).
HEALING_LR, TRAINED_LR, TRAINED_BELOW_RATIO = 1e-4, 1e-5, 2.0


def lr_choice(lr: float | None, student_ppl, teacher_ppl) -> tuple[float, str]:
    """The peak learning rate and why: `lr` when given, else by the scored perplexity ratio (per-domain arrays)."""
    if lr is not None:
        return float(lr), f"{lr:.3g} (--lr)"
    s, t = np.asarray(student_ppl, dtype=np.float64), np.asarray(teacher_ppl, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(t) & (s > 0) & (t > 0)
    heal, trained = _short(HEALING_LR), _short(TRAINED_LR)
    if not ok.any():
        return HEALING_LR, f"{heal} (default; the scores hold no perplexity ratio to choose by; --lr sets it)"
    ratio = float(np.exp(np.mean(np.log(s[ok] / t[ok]))))
    if ratio < TRAINED_BELOW_RATIO:
        return TRAINED_LR, (f"{trained} (default for a student already close to its teacher: scored perplexity ratio "
                            f"{ratio:.2f} < {TRAINED_BELOW_RATIO:g}; a student far from it, e.g. freshly pruned, gets "
                            f"{heal}; --lr sets it)")
    return HEALING_LR, (f"{heal} (default for a student far from its teacher, e.g. freshly pruned: scored perplexity "
                        f"ratio {ratio:.2f} >= {TRAINED_BELOW_RATIO:g}; a student already close gets {trained}; --lr sets it)")


def _short(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")  # 1e-4, as a user types it


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (one pass over each parameter, CPU and CUDA alike: on a 110M-parameter
    student on one CPU thread 0.11 s per step against 0.38 s for foreach; equal to 1e-8). The same update
    as foreach, and the same state dict, so checkpoints resume across the two."""
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay,
                             betas=(0.9, 0.95), fused=True)


def checkpoint_to_resume(settings: Settings) -> Path | None:
    """The newest complete checkpoint of an interrupted run (None: it wrote none, so start fresh)."""
    from distillkit.training import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(settings.checkpoint_root)
    return latest[1] if latest else None


def heldout_report(parts: Components, settings: Settings, state: TrainState, with_kl: bool,
                   split: str = "test") -> dict[str, Any]:
    """Per domain: held-out tokens, student perplexity and mean KL(teacher || student) per token, on the test rows
    (the before/after report) or the dev rows (the early check)."""
    from distillkit.training.ddk import measure_heldout

    c = parts.corpus
    held = measure_heldout(parts.model, c.seqs, c.heldout_rows if split == "test" else c.dev_rows, state.mixer.domains, batch_size=settings.eval_batch_size,
                           pad_id=c.pad_id, device=parts.dist.device, dist=parts.dist, teacher_fn=parts.eval_teacher,
                           topk=c.topk, with_kl=with_kl, pack=settings.pack)
    kl = held.mean_kl
    return {"tokens": [int(x) for x in held.tokens], "student_ppl": [float(x) for x in held.student_ppl],
            "kl": [float(x) for x in kl] if kl is not None else None, **{f"overall_{k}": v for k, v in held.overall().items()}}


__all__ = ["Inputs", "adamw", "checkpoint_to_resume", "heldout_report", "lr_choice", "precision_choice"]
