"""The training loop: plain PyTorch over frozen `Settings`, the run's `Components` (both in `parts`) and its
`TrainState`.

Per optimizer step: take the curriculum stage of this step (pool, T, λ; restart the optimizer at a
stage start if asked), draw the global batch (every rank draws the same and takes its slice), run
`grad_accum` micro-batches -- teacher forward under no_grad, student forward + the loss
(`distillkit.losses.objective`) -- scaled so the gradient is that of the token mean over the
*global* batch, clip, AdamW step; then log, re-weight domains (DDK) and checkpoint when due. A
non-finite loss or gradient norm stops the run before the optimizer step, so the last checkpoint
stays the last good state.

Everything the loop changes lives in `TrainState` (plus the model and optimizer), so a checkpoint
is the model, the optimizer and ``state.state_dict()``, and resuming restores exactly those.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from distillkit.errors import DistillkitError
from distillkit.training import checkpoint as ckpt
from distillkit.training import distributed as D
from distillkit.training import early_check as early
from distillkit.training import stop
from distillkit.training.batches import collate
from distillkit.training.ddk import measure_heldout
from distillkit.training.monitor import Monitor
from distillkit.training.components import Components, Corpus, Settings
from distillkit.training.sampler import rank_slice
from distillkit.training.schedule import Stage, stage_at
from distillkit.training.state import TrainState


class TrainingDiverged(DistillkitError):
    """The loss or gradient norm became NaN/inf; the last checkpoint is kept."""


def save(parts: Components, settings: Settings, state: TrainState, optimizer: torch.optim.Optimizer) -> None:
    """Checkpoint (collective under FSDP2; rank 0 writes)."""
    model_sd = D.model_state(parts.model, parts.dist, settings.strategy)
    optim_sd = D.optimizer_state(parts.model, optimizer, parts.dist, settings.strategy)
    if parts.dist.is_main:
        ckpt.save_checkpoint(settings.checkpoint_root, state.step, model_sd, optim_sd, state.state_dict(), state.summary(),
                             settings.keep_checkpoints)
    D.barrier(parts.dist)


def restore(parts: Components, settings: Settings, state: TrainState, optimizer: torch.optim.Optimizer, path: Path) -> None:
    model_sd, optim_sd, trainer = ckpt.load_checkpoint(path)
    D.load_model_state(parts.model, model_sd, parts.dist, settings.strategy)
    D.load_optimizer_state(parts.model, optimizer, optim_sd, parts.dist, settings.strategy)
    state.load_state_dict(trainer)
    state.resumed_from = state.step


def train(parts: Components, settings: Settings, state: TrainState, resume_from: Path | None = None) -> TrainState:
    """Run (or continue, from checkpoint directory `resume_from`) until the last planned step."""
    dist, total = parts.dist, parts.total_steps
    params = [p for p in parts.model.parameters() if p.requires_grad]
    optimizer = parts.make_optimizer()
    if resume_from is not None:
        restore(parts, settings, state, optimizer, resume_from)
    parts.model.train()
    with Monitor(total, state.step, dist.is_main, settings.tensorboard_dir, settings.log_every) as monitor:
        if state.resumed_from is not None:
            monitor.note(f"resumed from step {state.resumed_from} ({resume_from})")
        if dist.is_main:  # what killed runs left: renamed-aside and temp copies, incomplete checkpoints
            for p in ckpt.sweep(settings.checkpoint_root):
                monitor.note(f"removed {p}: an incomplete checkpoint older than the newest complete one (left by a killed run)")
        while state.step < total:
            t0 = time.perf_counter()
            stage = stage_at(parts.stages, state.step)
            if stage.stage != state.sampler.stage:
                state.sampler.set_stage(stage.stage)
                if settings.restart_optimizer and state.step == stage.start:
                    optimizer = parts.make_optimizer()  # POCL's reference restarts optimizer and LR schedule per stage
            lr = parts.lr(state.step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            extra_params = {"t": state.taid.t} if state.taid is not None else {}

            global_rows = state.sampler.next_batch(settings.batch_size)
            if settings.record_batches:
                state.drawn.append(global_rows.astype(np.int64))
            on_policy = settings.on_policy is not None and settings.on_policy.is_on_policy(state.step)
            loss_v, kd_v, ce_v, tokens = accumulate_gradients(parts, settings, global_rows, stage, extra_params,
                                                              step=state.step, on_policy=on_policy)
            grad_norm = D.grad_norm_value(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
            if not (np.isfinite(loss_v) and np.isfinite(grad_norm)):
                raise diverged(settings, state, stage, lr, loss_v, grad_norm)
            with record_function("distillkit.optimizer"):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if state.taid is not None:
                state.taid.update(kd_v, state.step - 1, total)
            row = {"step": state.step, "loss": loss_v, "kd_loss": kd_v, "ce_loss": ce_v, "temperature": stage.temperature,
                   "kd_weight": 1.0 if on_policy else stage.kd_weight, "on_policy": on_policy, "stage": stage.stage, "lr": lr, "tokens": tokens,
                   "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9), "grad_norm": grad_norm,
                   "taid_t": extra_params.get("t", float("nan"))}
            state.metrics.append(row)
            monitor.log(row)
            if state.mixer.due(state.step):
                c = parts.corpus
                held = measure_heldout(parts.model, c.seqs, c.dev_rows, state.mixer.domains,
                                       batch_size=settings.eval_batch_size, pad_id=c.pad_id, device=dist.device, dist=dist,
                                       pack=settings.pack)
                state.sampler.set_weights(state.mixer.update(state.step, held.student_ppl))
                monitor.scalars("ddk_weight", dict(zip(state.mixer.domains, state.mixer.weights)), state.step)
            if early.due(settings, state, total) and early.early_check(parts, settings, state, monitor.warn)["rose"]:
                if settings.early_check_stop:
                    save(parts, settings, state, optimizer)
                    raise early.stop_error(state.before["early_check"], ckpt.describe_latest(settings.checkpoint_root))
            saved = state.step == total or bool(settings.save_every and state.step % settings.save_every == 0)
            if saved:
                save(parts, settings, state, optimizer)
            signum = stop_agreed(dist) if state.step < total else 0
            if signum:
                if not saved:
                    save(parts, settings, state, optimizer)
                raise stopped(settings, state, total, signum)
    if dist.is_main:  # the last checkpoint is written: no incomplete one goes into the artifact
        ckpt.sweep(settings.checkpoint_root, finished=True)
    return state


def stop_agreed(dist) -> int:
    """The signal that asked this run to stop (0: none); under torchrun, one rank's request stops every rank."""
    signum = stop.requested()
    if dist.world_size > 1:
        flag = torch.tensor([float(signum)], dtype=torch.float64, device=dist.device)
        D.all_reduce_sum(flag, dist)
        signum = signum or (int(signal.SIGTERM) if float(flag[0]) > 0 else 0)
    return signum


def stopped(settings: Settings, state: TrainState, total: int, signum: int) -> stop.StoppedBySignal:
    return stop.StoppedBySignal(
        f"stopped by {stop.signal_name(signum)} after step {state.step} of {total}; checkpoint "
        f"{ckpt.checkpoint_dir(settings.checkpoint_root, state.step)} written: rerun the same command (`train`: with "
        "--resume) to continue from it", signum)


def accumulate_gradients(parts: Components, settings: Settings, global_rows: np.ndarray, stage: Stage,
                         extra_params: dict[str, float], step: int = 0,
                         on_policy: bool = False) -> tuple[float, float, float, int]:
    """This rank's micro-batches of the step: forward, backward; the global batch's (loss, kd, ce) token means
    and its token count. On-policy, each micro-batch is the student's answers to its rows' prompts."""
    dist, c = parts.dist, parts.corpus
    micro = settings.batch_size // dist.world_size // settings.grad_accum
    mine = rank_slice(global_rows, dist.rank, dist.world_size)
    if on_policy:
        # The targets are the student's answers: generate this rank's micro-batches first, then agree on
        # the global target count (every rank's answers have their own lengths).
        from distillkit.training.onpolicy import student_batch

        with record_function("distillkit.generate"):
            student = D.unwrap(parts.model).student
            batches = [student_batch(student, c.seqs, mine[m * micro : (m + 1) * micro], settings.on_policy, step=step,
                                     rank=dist.rank, micro=m, device=dist.device, autocast=settings.autocast,
                                     pack=settings.pack, source=parts.answers)
                       for m in range(settings.grad_accum)]
        counts = torch.tensor([sum(b.num_targets for b in batches), sum(int(b.attention_mask.sum()) for b in batches)],
                              dtype=torch.float64, device=dist.device)
        D.all_reduce_sum(counts, dist)
        n_global, tokens = max(int(counts[0]), 1), int(counts[1])
        kd_weight = 1.0  # GKD: the divergence alone on the student's own samples
    else:
        # Every rank knows the whole global batch, so each can scale its micro-batches by the
        # global target count: the summed gradient is that of the global token mean.
        n_global = max(int(c.seqs.num_targets[global_rows].sum()), 1)
        tokens = int(sum(len(c.seqs.ids[i]) for i in global_rows))
        kd_weight = stage.kd_weight
    device_type = "cuda" if str(dist.device).startswith("cuda") else "cpu"
    sums = torch.zeros(3, dtype=torch.float64, device=dist.device)  # loss, kd, ce (token-weighted)
    for m in range(settings.grad_accum):
        batch = (batches[m] if on_policy else
                 collate(c.seqs, mine[m * micro : (m + 1) * micro], c.pad_id, dist.device, c.topk, pack=settings.pack))
        with record_function("distillkit.teacher_forward"):
            teacher = parts.teacher(batch)
        sync = m == settings.grad_accum - 1 or not hasattr(parts.model, "no_sync")
        with contextlib.nullcontext() if sync else parts.model.no_sync():
            with torch.autocast(device_type, dtype=settings.autocast or torch.bfloat16, enabled=settings.autocast is not None):
                loss, kd, ce = parts.model(batch, teacher, stage.temperature, extra_params, kd_weight=kd_weight,
                                           ce_weight=0.0 if on_policy else None)
            share = batch.num_targets / n_global
            with record_function("distillkit.backward"):
                (loss * (share * dist.world_size)).backward()  # DDP/FSDP2 average over ranks: undo the 1/N
        sums += torch.stack([loss.detach(), kd.detach(), ce.detach()]).double() * share
    D.all_reduce_sum(sums, dist)
    loss_v, kd_v, ce_v = (float(x) for x in sums.cpu())
    return loss_v, kd_v, ce_v, tokens


def diverged(settings: Settings, state: TrainState, stage: Stage, lr: float, loss: float, grad_norm: float) -> TrainingDiverged:
    last = ckpt.latest_checkpoint(settings.checkpoint_root)
    head = (f"loss became {loss} (grad norm {grad_norm}) at step {state.step + 1} (stage {stage.stage}, T {stage.temperature:g}, "
            f"lr {lr:.3g}); training stopped before the optimizer step; ")
    if last is None:
        return TrainingDiverged(head + "no checkpoint was written yet, so there is nothing to resume: lower --lr "
                                "(or --max-grad-norm) and rerun with --overwrite")
    return TrainingDiverged(
        head + f"the last good checkpoint is step {last[0]} in {last[1]}. Lower --lr (or --max-grad-norm) "
        "and rerun with --overwrite; --resume continues from that checkpoint with the same settings"
    )


__all__ = ["Settings", "Corpus", "Components", "TrainingDiverged", "train", "save", "restore", "accumulate_gradients"]
