"""What a run shows and records: a rich live line (step, loss, KD, CE, stage, T, tokens/s, ETA),
plain log lines when stderr is not a terminal (nohup, CI), the ``metrics.arrow`` rows, and optional
TensorBoard scalars (imported lazily; skipped with a note when tensorboard is not installed).
"""

from __future__ import annotations

import sys
import time
from typing import Any

METRIC_TYPES = {
    "step": "int64", "loss": "float64", "kd_loss": "float64", "ce_loss": "float64", "temperature": "float64",
    "kd_weight": "float64", "stage": "int32", "lr": "float64", "tokens_per_s": "float64", "tokens": "int64",
    "grad_norm": "float64", "taid_t": "float64", "on_policy": "bool_",
}


def metrics_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    return pa.table({c: pa.array([r.get(c) for r in rows], getattr(pa, t)()) for c, t in METRIC_TYPES.items()})


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Monitor:
    """Rank 0's display of a run; a silent no-op on other ranks."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, tensorboard_dir: str | None = None,
                 log_every: int = 1) -> None:
        from distillkit.progress import console

        self.console = console
        self.total, self.start = total_steps, start_step
        self.enabled, self.log_every = enabled, max(1, log_every)
        self.t0 = time.perf_counter()
        self.live = enabled and console.is_terminal
        self.progress = None
        self.tb = None
        if enabled and tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(tensorboard_dir)
            except ImportError:
                console.print("[yellow]tensorboard is not installed: skipping TensorBoard logging (pip install tensorboard)[/]")

    def __enter__(self) -> "Monitor":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(bar_width=24), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
                console=self.console, transient=False,
                disable="pytest" in sys.modules,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, completed=self.start, info="", eta="--")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        if self.tb is not None:
            self.tb.close()

    def eta(self, step: int) -> float:
        done = step - self.start
        return (time.perf_counter() - self.t0) / done * (self.total - step) if done > 0 else float("nan")

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = row["step"]
        info = (f"loss {row['loss']:.4f}  KD {row['kd_loss']:.4f}  CE {row['ce_loss']:.4f}  stage {row['stage']}  "
                f"T {row['temperature']:.2f}  λ {row['kd_weight']:.2f}  {row['tokens_per_s']:,.0f} tok/s")
        eta = self.eta(step)
        eta_s = _fmt_eta(eta) if eta == eta else "--"
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info, eta=eta_s)
        elif step % self.log_every == 0 or step == self.total:
            self.console.print(f"step {step}/{self.total}  {info}  lr {row['lr']:.2e}  eta {eta_s}", highlight=False)
        if self.tb is not None:
            for key in ("loss", "kd_loss", "ce_loss", "temperature", "kd_weight", "stage", "lr", "tokens_per_s", "grad_norm"):
                self.tb.add_scalar(f"train/{key}", row[key], step)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False)

    def warn(self, text: str) -> None:
        """One line that needs the user's attention (e.g. the early held-out check found a rise)."""
        if self.enabled:
            self.console.print(f"[yellow]warning[/]: {text}", highlight=False)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)


__all__ = ["Monitor", "metrics_table", "METRIC_TYPES"]
