"""`distillkit train`: options, and the summary of a finished run (loss, held-out before/after per domain)."""

from __future__ import annotations

from distillkit.cli.options import StageArgs, stage_command
from distillkit.pipelines.train import TrainConfig


@stage_command(TrainConfig, "train", short={"plan": "-p", "teacher": "-t", "student": "-s", "out": "-o", "batch_size": "-b"})
def train(args: StageArgs) -> None:
    """Distil the teacher into the student following a plan: curriculum stages (POCL) and domain re-weighting (DDK).

    Multi-process: torchrun --nproc_per_node N --no-python distillkit train ... (DDP; --strategy fsdp2 to shard).
    """
    from distillkit.pipelines import train as stage
    from distillkit.ranks import is_main_process

    res = stage.run(args.resolve(), resume=args.resume, overwrite=args.overwrite)
    if is_main_process():
        summary(res.path)


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
