"""Assemble a `TrainRun` from a resolved config and the loaded inputs: schedule, sampler, mixture,
loss, wrapped student, teacher source, and the held-out before/after measurement."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.errors import ConfigError


@dataclass
class Inputs:
    """What `pipelines.train.prepare` loaded and checked (before the output is touched)."""

    plan: Any  # Artifact
    scores: Any  # Artifact
    plan_info: dict[str, Any]
    tokenizer: Any
    student: Any  # trainable fp32 model on this rank's device
    teacher: Any  # frozen model (online) or None (offline)
    vocab_size: int
    seqs: Any  # Sequences: training rows (curriculum order) first, then held-out rows
    num_train: int
    domain_codes: np.ndarray  # [num_train] index into `domains`
    stages: np.ndarray  # [num_train] curriculum stage
    domains: list[str]
    plan_weights: np.ndarray
    teacher_ppl: np.ndarray
    student_ppl: np.ndarray
    heldout_rows: list[list[int]]  # per domain, rows of `seqs`
    heldout_source: list[str]  # per domain: "validation" or "train" (no held-out docs)
    topk: Any  # TopKStore or None
    pad_id: int
    identity: dict[str, Any] = field(default_factory=dict)


def divergence_params(cfg) -> dict[str, float]:
    """The chosen divergence's own parameters (distillkit.losses rejects any other)."""
    return {"jsd": {"beta": cfg.jsd_beta}, "skl": {"alpha": cfg.skew_alpha}, "srkl": {"alpha": cfg.skew_alpha},
            "akl": {"mu": cfg.akl_mu}}.get(cfg.loss, {})


def teacher_sources(teacher, impl: str):
    """(train source, eval source): batch -> the teacher's LinearHead (chunked) or full logits (plain)."""
    import torch
    import torch.nn.functional as F

    from distillkit.losses import LinearHead

    if teacher is None:
        return (lambda batch: None), (lambda batch: None)
    decoder, head = teacher.get_decoder(), teacher.get_output_embeddings()

    def linear_head(batch):
        with torch.no_grad():
            hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        return LinearHead(hidden, head.weight, getattr(head, "bias", None))

    def logits(batch):
        h = linear_head(batch)
        with torch.no_grad():
            return F.linear(h.hidden, h.weight, h.bias)

    return (linear_head if impl == "chunked" else logits), linear_head


def autocast_dtype(precision: str, device: str):
    import torch

    from distillkit.models import bf16_supported

    if precision == "bf16" or (precision == "auto" and str(device).startswith("cuda") and bf16_supported(device)):
        return torch.bfloat16
    return None


def build(cfg, inputs: Inputs, dist, partial: Path, resumed: bool):
    """The `TrainRun` for this rank and the checkpoint to resume from (None: start fresh)."""
    from distillkit.losses import TaidSchedule
    from distillkit.training import checkpoint as ckpt
    from distillkit.training import distributed as D
    from distillkit.training.ddk import DomainMixer
    from distillkit.training.loop import LossSpec, StudentLoss, TrainRun
    from distillkit.training.sampler import CurriculumSampler
    from distillkit.training.schedule import LRSchedule, plan_stages

    if cfg.batch_size % (dist.world_size * cfg.grad_accum):
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of processes × grad_accum "
                          f"({dist.world_size} × {cfg.grad_accum}); change --batch-size or --grad-accum")
    info = inputs.plan_info
    restart = info.get("restart_optimizer", False) if cfg.restart_optimizer is None else cfg.restart_optimizer
    stages = plan_stages(info, cfg.batch_size, cfg.steps, cfg.temperature, cfg.kd_weight)
    mix = info["mixture"]
    mixer = DomainMixer.create(cfg.mixture, inputs.domains, inputs.plan_weights, inputs.teacher_ppl, inputs.student_ppl,
                               interval=cfg.ddk_interval or mix["interval"],
                               alpha=mix["alpha"] if cfg.ddk_alpha is None else cfg.ddk_alpha,
                               smoothing=mix["smoothing"] if cfg.ddk_smoothing is None else cfg.ddk_smoothing)
    sampler = CurriculumSampler(inputs.domain_codes, inputs.stages, mixer.weights, cfg.seed)
    spec = LossSpec(cfg.loss, divergence_params(cfg), cfg.loss_form, cfg.loss_impl, inputs.vocab_size, cfg.chunk_size, cfg.sparse_tail)
    model = D.wrap(StudentLoss(inputs.student, spec), dist, cfg.strategy)
    train_src, eval_src = teacher_sources(inputs.teacher, cfg.loss_impl)
    run = TrainRun(
        model=model, teacher_input=train_src, eval_teacher=eval_src, seqs=inputs.seqs, topk=inputs.topk, pad_id=inputs.pad_id, sampler=sampler,
        stages=stages, lr=LRSchedule(cfg.lr, tuple(stages), cfg.warmup_fraction, cfg.min_lr_ratio, restart),
        mixer=mixer, heldout_rows=inputs.heldout_rows, spec=spec,
        taid=TaidSchedule(cfg.taid_t_start, cfg.taid_t_end) if cfg.loss == "taid" else None,
        dist=dist, strategy=cfg.strategy, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        max_grad_norm=cfg.max_grad_norm or float("inf"), weight_decay=cfg.weight_decay, restart_optimizer=restart,
        autocast=autocast_dtype(cfg.precision, dist.device), save_every=cfg.save_every, keep_checkpoints=cfg.keep_checkpoints,
        checkpoint_root=partial / "checkpoints", eval_batch_size=cfg.eval_batch_size, log_every=cfg.log_every,
        tensorboard_dir=str(partial / "tensorboard") if cfg.tensorboard else None, record_batches=cfg.record_batches,
    )
    latest = ckpt.latest_checkpoint(run.checkpoint_root) if resumed else None
    if latest is None and cfg.eval_heldout:
        run.extra["before"] = heldout_report(run, inputs)
    return run, (latest[1] if latest else None)


def heldout_report(run, inputs: Inputs) -> dict[str, list]:
    """Per domain: held-out tokens, student perplexity and mean KL(teacher || student) per token."""
    from distillkit.training.ddk import measure_heldout

    with_kl = inputs.teacher is not None or inputs.topk is not None
    held = measure_heldout(run.model, run.seqs, run.heldout_rows, run.mixer.domains, batch_size=run.eval_batch_size,
                           pad_id=run.pad_id, device=run.dist.device, dist=run.dist, teacher_fn=run.eval_teacher,
                           topk=run.topk, with_kl=with_kl)
    kl = held.mean_kl
    return {"tokens": [int(x) for x in held.tokens], "student_ppl": [float(x) for x in held.student_ppl],
            "kl": [float(x) for x in kl] if kl is not None else None, **{f"overall_{k}": v for k, v in held.overall().items()}}


__all__ = ["Inputs", "build", "heldout_report", "divergence_params", "teacher_sources", "autocast_dtype"]
