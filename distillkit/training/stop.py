"""A graceful stop for training: SIGTERM (a batch scheduler's pre-emption notice, `kill`) or SIGINT (Ctrl-C) asks
the loop to finish the step it is in, write a checkpoint and exit, so no step is lost; a second signal stops at
once (the last checkpoint is kept, as after a crash).

`requested()` is what the loop polls after each step. Handlers are installed only in the main thread of the
main interpreter (`signal.signal` refuses elsewhere); under torchrun every rank gets the signal and the loop
agrees on it across ranks before it stops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from distillkit.errors import DistillkitError

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


class StoppedBySignal(DistillkitError):
    """Training stopped on request after writing a checkpoint. Exit code 128 + the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def requested() -> int:
    """The signal that asked for a stop (0: none)."""
    return _received[0] if _received else 0


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextlib.contextmanager
def handling(handler) -> Iterator[bool]:
    """Within the block, SIGTERM and SIGINT go to `handler(signum, frame)`; the previous handlers come back when
    it ends; a signal the process ignores (SIG_IGN) is left ignored. Yields whether the handler was installed: `signal.signal` works only in the main thread, elsewhere the
    block runs with the handlers it had."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    # A signal the process ignores stays ignored: a job started with `&` from a script or under nohup ignores
    # SIGINT (the shell set it so), and must not start stopping on one.
    previous = {s: signal.signal(s, handler) for s in _SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield True
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def graceful_stop(say=None) -> Iterator[None]:
    """Within the block, the first SIGTERM/SIGINT is recorded for `requested()` (and announced through `say`);
    the second restores the previous handlers and delivers itself, so the process stops as it would have."""
    previous = {s: signal.getsignal(s) for s in _SIGNALS}

    def handler(signum, frame):
        if _received:
            for s, h in previous.items():
                signal.signal(s, h)
            signal.raise_signal(signum)  # to this (the main) thread: the restored handler takes it at once
            return
        _received.append(signum)
        if say is not None:
            say(f"{signal_name(signum)} received: stopping after this step with a checkpoint "
                f"(send it again to stop at once)")

    _received.clear()
    try:
        with handling(handler):
            yield
    finally:
        _received.clear()


__all__ = ["StoppedBySignal", "graceful_stop", "handling", "requested", "signal_name"]
