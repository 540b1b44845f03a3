"""Rich progress bars that show throughput (tokens/s) and ETA; quiet when not a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# Rich wraps at 80 columns when stderr is not a terminal (a log file, a batch job, a study worker's log), which breaks
# the step lines and the inspect tables mid-row. Logs get LOG_WIDTH; a terminal, or COLUMNS when set, wins.
LOG_WIDTH = 160


def _log_width() -> int | None:
    if os.environ.get("COLUMNS") or sys.stderr.isatty():
        return None
    return LOG_WIDTH


console = Console(stderr=True, width=_log_width())


class RateColumn(ProgressColumn):
    """Completed units per second, e.g. '1,234 tok/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:  # type: ignore[override]
        speed = task.finished_speed or task.speed
        if not speed and task.elapsed:
            speed = task.completed / task.elapsed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"-- {self.unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, unit: str = "tok") -> Iterator["Bar"]:
    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal and "pytest" in sys.modules,
        transient=False,
    )
    with prog:
        task = prog.add_task(description, total=total)
        yield Bar(prog, task)


class Bar:
    def __init__(self, prog: Progress, task) -> None:
        self.prog, self.task = prog, task

    def advance(self, n: float) -> None:
        self.prog.advance(self.task, n)

    def describe(self, text: str) -> None:
        self.prog.update(self.task, description=text)
