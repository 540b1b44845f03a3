"""What every command shares: config resolution, --print-config, and error -> exit code."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import typer

STATE = {"debug": False}

# The stage commands' common options are generated with their config keys (distillkit/cli/options.py); prune declares its own.


def err(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Map library errors to one line and an exit code (2 bad input, 1 runtime); --debug shows the traceback."""
    from distillkit.errors import DistillkitError

    try:
        yield
    except typer.Exit:
        raise
    except DistillkitError as e:
        if STATE["debug"]:
            raise
        err(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err("interrupted; rerun the same command with --resume to continue")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - unexpected failures are runtime errors (exit 1)
        if STATE["debug"]:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        err(f"{type(e).__name__}: {first} (rerun with --debug for the traceback)")
        raise typer.Exit(1) from None


def resolve_or_print(cls, config: str | None, sets: list[str] | None, options: dict[str, Any], print_config: bool, section: str):
    from distillkit.config import resolve, to_toml

    cfg = resolve(cls, config, sets, options, section=section)
    if print_config:
        sys.stdout.write(to_toml(cfg, section))
        raise typer.Exit(0)
    return cfg
