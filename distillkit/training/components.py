"""What the training loop runs over: its frozen `Settings`, the `Corpus` it draws from and the run's `Components`.

Built from the train config by `distillkit.pipelines.train` (`make_settings`, `make_components`), read by the loop
(`loop.train`), the early held-out check (`early_check`) and `setup`'s held-out report and checkpoint lookup. Kept
apart from the loop so that neither the setup nor the check has to import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from distillkit.training import distributed as D
from distillkit.training.schedule import LRSchedule, Stage

if TYPE_CHECKING:
    from distillkit.losses import LossSpec
    from distillkit.training.batches import Sequences, TopKStore
    from distillkit.training.onpolicy import AnswerSource, OnPolicy
    from distillkit.training.student import TeacherSource


@dataclass(frozen=True, slots=True)
class Settings:
    """The hyper-parameters and places the loop reads; fixed for a run."""

    batch_size: int  # global sequences per optimizer step
    grad_accum: int  # micro-batches per process per step
    max_grad_norm: float  # inf: no clipping
    weight_decay: float
    restart_optimizer: bool  # a fresh optimizer at each stage start (POCL's reference code)
    autocast: torch.dtype | None  # the student forward's autocast dtype; None: fp32
    save_every: int  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int
    log_every: int
    eval_batch_size: int  # sequences per held-out batch (DDK re-measurement, before/after report)
    record_batches: bool  # keep each step's drawn rows (-> batches.arrow)
    strategy: D.Strategy
    checkpoint_root: Path
    tensorboard_dir: str | None = None
    precision: str = ""  # what the student computes in, and why (printed, and recorded in the manifest)
    on_policy: OnPolicy | None = None  # on-policy (GKD) generation settings; None: off-policy only
    early_check: int = 0  # re-measure the "before" held-out rows after this many steps and warn on a rise (0: off)
    early_check_stop: bool = False  # and stop there (checkpoint kept) when it rose
    pack: bool = False  # pack each off-policy micro-batch's samples into fewer rows (and the held-out batches)


@dataclass(frozen=True, slots=True)
class Corpus:
    """The tokenized rows the loop draws from and measures on."""

    seqs: Sequences  # training rows (curriculum order) first, then held-out rows
    pad_id: int
    topk: TopKStore | None  # the offline teacher's stored top-k; None online
    heldout_rows: list[list[int]]  # per mixer domain: rows of `seqs` of the test slice (the before/after report)
    dev_rows: list[list[int]]  # per mixer domain: rows of `seqs` every in-run decision reads (DDK, the early check)


@dataclass(frozen=True, slots=True)
class Components:
    """What the loop trains with; built once from the config, never checkpointed (the model's
    weights and the optimizer's state are, by the loop)."""

    model: nn.Module  # StudentLoss, wrapped for DDP / FSDP2
    teacher: TeacherSource  # batch -> the loss's teacher input
    eval_teacher: TeacherSource  # batch -> the teacher for held-out KL
    corpus: Corpus
    stages: tuple[Stage, ...]
    lr: LRSchedule
    loss: LossSpec
    make_optimizer: Callable[[], torch.optim.Optimizer]  # a fresh optimizer over the trainable parameters
    dist: D.DistInfo
    answers: AnswerSource | None = None  # on-policy steps' answer source; None: transformers generate on the model

    @property
    def total_steps(self) -> int:
        return self.stages[-1].end


__all__ = ["Components", "Corpus", "Settings"]
