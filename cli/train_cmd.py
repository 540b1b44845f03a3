"""`distillkit train`: options, and the summary of a finished run (loss, held-out before/after per domain)."""

from __future__ import annotations

from typing import List, Optional

import typer

from distillkit.cli.common import ConfigOpt, OverwriteOpt, PrintOpt, ResumeOpt, SetOpt, handled, resolve_or_print


def train(
    plan: Optional[str] = typer.Option(None, "--plan", "-p", help="Plan artifact directory (it names its scores and data)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", "-t", help="Teacher: HF dir, .gguf, or alias (smollm2-135m)."),
    student: Optional[str] = typer.Option(None, "--student", "-s", help="Student to train: HF dir, .gguf, or alias."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output artifact directory."),
    loss: Optional[str] = typer.Option(None, "--loss", help="fkl | rkl | jsd | skl | srkl | tvd | akl | taid."),
    loss_form: Optional[str] = typer.Option(None, "--loss-form", help="pocl: (1-λ)·CE + λ·D | additive: CE + λ·D (DDK)."),
    kd_weight: Optional[float] = typer.Option(None, "--kd-weight", help="Fixed λ (γ for additive) instead of the plan's per stage."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Fixed T instead of the plan's per stage."),
    teacher_mode: Optional[str] = typer.Option(None, "--teacher-mode", help="online (teacher forward) | offline (scored top-k)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (default: the plan's stages)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Global sequences per optimizer step."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per process per step."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per sequence (first seq_len of each sample)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW, cosine with warmup)."),
    mixture: Optional[str] = typer.Option(None, "--mixture", help="ddk (re-weighted every K steps) | static (plan's) | uniform."),
    ddk_interval: Optional[int] = typer.Option(None, "--ddk-interval", help="DDK re-measurement interval K (default: the plan's)."),
    smoothing: Optional[bool] = typer.Option(None, "--smoothing/--no-smoothing", help="DDK factor smoothing (Eq. 2)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (sampling, dropout)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps (0: only at the end)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Under torchrun: ddp | fsdp2."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
    loss_impl: Optional[str] = typer.Option(None, "--loss-impl", help="chunked (fused LM head) | plain (full logits)."),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help="Also log to TensorBoard."),
    config: Optional[str] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    print_config: bool = PrintOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Distil the teacher into the student following a plan: curriculum stages (POCL) and domain re-weighting (DDK).

    Multi-process: torchrun --nproc_per_node N --no-python distillkit train ... (DDP; --strategy fsdp2 to shard).
    """
    with handled():
        from distillkit.pipelines import train as stage

        opts = dict(plan=plan, teacher=teacher, student=student, out=out, loss=loss, loss_form=loss_form, kd_weight=kd_weight,
                    temperature=temperature, teacher_mode=teacher_mode, steps=steps, batch_size=batch_size,
                    grad_accum=grad_accum, seq_len=seq_len, lr=lr, mixture=mixture, ddk_interval=ddk_interval,
                    ddk_smoothing=smoothing, seed=seed, save_every=save_every, strategy=strategy, device=device,
                    loss_impl=loss_impl, tensorboard=tensorboard)
        cfg = resolve_or_print(stage.TrainConfig, config, set_, opts, print_config, "train")
        path = stage.run(cfg, resume=resume, overwrite=overwrite)
        import os

        if os.environ.get("RANK", "0") == "0":
            summary(path)


def summary(path) -> None:
    """First/last loss, s/step, and held-out perplexity and KL per domain before and after training."""
    from rich.table import Table

    from distillkit.artifacts import read_artifact
    from distillkit.progress import console

    art = read_artifact(path, "train")
    f = art.manifest["figures"]
    console.print(f"train: {f['steps']} steps, loss {f['first_loss']:.4f} → {f['final_loss']:.4f}, "
                  f"{f.get('s_per_step')} s/step, {f.get('tokens_per_s')} tok/s (median), wall {f['wall_s']} s")
    if "heldout.arrow" not in art.files():
        return
    rows = art.table("heldout.arrow").to_pylist()
    t = Table(title="held-out, per domain: student perplexity and KL(teacher‖student) per token", title_justify="left")
    for c in ("domain", "tokens", "ppl T", "ppl S before", "ppl S after", "×", "KL before", "KL after"):
        t.add_column(c, justify="left" if c == "domain" else "right")
    for r in rows:
        kl = (f"{r['kl_before']:.3f}", f"{r['kl_after']:.3f}") if "kl_before" in r else ("-", "-")
        t.add_row(r["domain"] + ("*" if r["measured_on"] != "validation" else ""), f"{r['tokens']:,}", f"{r['teacher_ppl']:.2f}",
                  f"{r['student_ppl_before']:.2f}", f"{r['student_ppl_after']:.2f}",
                  f"{r['student_ppl_before'] / r['student_ppl_after']:.2f}", *kl)
    if any(r["measured_on"] != "validation" for r in rows):
        t.caption = "* measured on training rows (no held-out documents)"
    console.print(t)
