"""Exclusive locks: one writer per output artifact, and a claim/release pair for work queues.

A lock is a small file created with ``O_CREAT | O_EXCL`` (atomic, also on NFS) that holds JSON
``{pid, host, started, proc_start}``. The lock of an artifact ``<out>`` is ``<out>.lock`` beside it:
`distillkit.artifacts.ArtifactWriter` holds it for the writer's whole life, and ``distillkit run``
around each stage it runs, so a second writer (plain, ``--resume`` or ``--overwrite``) is refused
with `ArtifactLocked` naming the holder, before it looks at or touches the output.

A lock is *stale*, and is taken over, when its holder cannot be running: it was taken on this host
and its pid no longer runs (or runs another program: the process start time differs, the pid was
reused; or it is a zombie), or the pid is this process's own and this process does not hold it (a
writer that failed without releasing). A lock taken on another host is never judged stale (its
processes are not visible here): the message names the file to delete once that run is gone.
Takeover goes through a short-lived ``<lock>.takeover`` guard, so two processes that find the same
stale lock do not both take it.

Within one process the lock is re-entrant for the thread that holds it (``distillkit run`` holds a
stage's lock while the stage's writer takes it again); another thread is refused like another
process. Locks still held when the interpreter exits are removed.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from distillkit.errors import ArtifactLocked, DiskFull, is_disk_full

SUFFIX = ".lock"
_GUARD = ".takeover"
_UNWRITTEN_GRACE_S = 10.0  # an empty lock file younger than this is being written by its creator
_GUARD_STALE_S = 30.0  # a takeover guard older than this was left by a killed process

_HOST = socket.gethostname()
_mutex = threading.Lock()
_held: dict[str, list[int]] = {}  # absolute lock path -> [owning thread ident, re-entry count]


def output_dir(out: str | Path) -> Path:
    """The directory a stage asked to write `out` really writes: `out`, or where it points when it is a symbolic
    link (``ln -s BIGDISK/T L; --out L``: T, followed through every hop, also when T does not exist yet). The one
    place outputs are resolved: `partial_dir`, the lock (`lock_path`) and `ArtifactWriter` (its
    work, its final swap) all go through it, so the work and the result land on the target's disk, the link
    stays a link, and nothing is left beside it."""
    out = Path(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of artifact `out`: ``<out>.lock`` beside it (beside its target when `out` is a symbolic link,
    `output_dir`: the link and its target are one output, with one lock)."""

    out = output_dir(out)
    return out.with_name(out.name + SUFFIX)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as recorded in its file."""

    path: Path  # the lock file
    pid: int | None
    host: str | None
    started: str | None  # UTC, ISO 8601
    proc_start: int | None  # the holder's start time in clock ticks since boot (/proc/<pid>/stat), against pid reuse

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        if self.pid == os.getpid() and self.host == _HOST:
            who += " (this process)"
        if self.host and self.host != _HOST:
            who += f" on host {self.host}"
        if self.started:
            who += f", started {self.started}"
        return who


def _key(lock: Path) -> str:
    return os.path.abspath(lock)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()  # the command name (field 2) may hold spaces and parentheses


def _proc_start(pid: int) -> int | None:
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None  # field 22: starttime
    except (IndexError, ValueError):
        return None


def _pid_runs(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    except OSError:
        return False
    fields = _proc_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))  # a killed child not yet reaped is gone too


def _me() -> dict:
    return {"pid": os.getpid(), "host": _HOST, "proc_start": _proc_start(os.getpid()),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")}


def read_holder(lock: str | os.PathLike) -> Holder | None:
    """The holder recorded in lock file `lock`; None when there is no such file. An unreadable or empty
    file gives a Holder without pid."""
    lock = Path(lock)
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        text = ""
    try:
        d = json.loads(text) if text.strip() else {}
    except ValueError:
        d = {}
    if not isinstance(d, dict):
        d = {}

    def as_int(v):
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    return Holder(lock, as_int(d.get("pid")), d.get("host") if isinstance(d.get("host"), str) else None,
                  d.get("started") if isinstance(d.get("started"), str) else None, as_int(d.get("proc_start")))


def _is_stale(h: Holder) -> bool:
    if h.pid is None:  # empty or damaged: its creator died between create and write, unless it is writing right now
        try:
            return time.time() - h.path.stat().st_mtime > _UNWRITTEN_GRACE_S
        except OSError:
            return False
    if h.host != _HOST:
        return False
    if h.pid == os.getpid():
        with _mutex:
            return _key(h.path) not in _held
    if not _pid_runs(h.pid):
        return True
    if h.proc_start is not None:
        now = _proc_start(h.pid)
        if now is not None and now != h.proc_start:
            return True  # the pid was reused by another program
    return False


def live_holder(lock: str | os.PathLike) -> Holder | None:
    """The holder of `lock` if it is (or may be) running; None when the lock is free or stale."""
    h = read_holder(lock)
    return None if h is None or _is_stale(h) else h


def _create(lock: Path) -> bool:
    """Create `lock` holding this process's record; False when it exists. A full disk raises DiskFull."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_me(), f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        with contextlib.suppress(OSError):
            lock.unlink()
        if is_disk_full(e, lock):
            raise DiskFull(f"no space left on device while writing {lock}; free space on that disk and rerun") from None
        raise
    return True


def _take_over(lock: Path, stale: Holder) -> bool:
    """Replace the stale lock `stale` by this process's; False when another process is doing the same."""
    guard = lock.with_name(lock.name + _GUARD)
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > _GUARD_STALE_S:
                guard.unlink()
        return False
    try:
        now = read_holder(lock)
        if now is not None:
            if (now.pid, now.host, now.started) != (stale.pid, stale.host, stale.started) or not _is_stale(now):
                return False  # someone took it meanwhile
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        return _create(lock)
    finally:
        with contextlib.suppress(OSError):
            guard.unlink()


def _acquire(lock: Path, reentrant: bool) -> Holder | None:
    """Take `lock` for the calling thread: None when taken (or re-entered), else the live holder."""
    key, me = _key(lock), threading.get_ident()
    with _mutex:
        entry = _held.get(key)
        if entry is not None:
            if reentrant and entry[0] == me:
                entry[1] += 1
                return None
            return read_holder(lock) or Holder(lock, os.getpid(), _HOST, None, None)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(200):
        if _create(lock):
            break
        h = read_holder(lock)
        if h is None:
            continue  # released meanwhile: try again
        if _is_stale(h):
            if _take_over(lock, h):
                break
        elif h.pid is not None:
            return h
        time.sleep(0.02)  # a takeover by another process, or a lock file being written: look again
    else:
        return read_holder(lock) or Holder(lock, None, None, None, None)
    with _mutex:
        _held[key] = [me, 1]
    return None


def _release(lock: Path) -> None:
    key = _key(lock)
    with _mutex:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
    h = read_holder(lock)
    if h is not None and h.pid == os.getpid() and h.host == _HOST:
        with contextlib.suppress(OSError):
            lock.unlink()


# ---------------------------------------------------------------- artifacts


def acquire(out: str | os.PathLike) -> None:
    """Take the lock of artifact `out` (re-entrant for this thread); `ArtifactLocked` when a live process holds it."""
    lock = lock_path(out)
    h = _acquire(lock, reentrant=True)
    if h is not None:
        raise ArtifactLocked(locked_message(out, h))


def release_lock(out: str | os.PathLike) -> None:
    """Give back one hold of artifact `out`'s lock; the file goes when the last hold does. Never raises."""
    with contextlib.suppress(Exception):
        _release(lock_path(out))


@contextlib.contextmanager
def artifact_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of artifact `out` for the block (see `acquire`)."""
    acquire(out)
    try:
        yield lock_path(out)
    finally:
        release_lock(out)


def locked_message(out: str | os.PathLike, h: Holder) -> str:
    lock = lock_path(out)
    if h.pid is None:
        return (f"{out} is locked by {lock}, whose holder is unknown (the file is empty or damaged); "
                f"if no distillkit run writes {out}, delete {lock} and rerun")
    if h.host and h.host != _HOST:
        return (f"{out} is being written by another process ({h.describe()}); wait for it to finish, or stop it and rerun "
                f"with --resume; if that process no longer runs, delete {lock}")
    return (f"{out} is being written by another process ({h.describe()}); wait for it to finish, or stop it "
            f"(kill {h.pid}) and rerun with --resume to continue its work")


# ---------------------------------------------------------------- work queues


def claim(lock: str | os.PathLike) -> bool:
    """Take the lock file `lock` itself for this process (not re-entrant); False when a live process holds it
    (this one included) or it cannot be written. A stale lock is taken over. Never raises."""
    try:
        lock = Path(lock)
        lock.parent.mkdir(parents=True, exist_ok=True)
        return _acquire(lock, reentrant=False) is None
    except Exception:  # noqa: BLE001 - a claim that cannot be made is simply not made
        return False


def release(lock: str | os.PathLike) -> None:
    """Give back a lock taken with `claim` (only if this process holds it). Never raises."""
    with contextlib.suppress(Exception):
        _release(Path(lock))


@atexit.register
def _release_all() -> None:
    with _mutex:
        keys = list(_held)
        _held.clear()
    for key in keys:
        lock = Path(key)
        h = read_holder(lock)
        if h is not None and h.pid == os.getpid() and h.host == _HOST:
            with contextlib.suppress(OSError):
                lock.unlink()


__all__ = ["SUFFIX", "Holder", "lock_path", "read_holder", "live_holder", "acquire", "release_lock", "artifact_lock",
           "locked_message", "claim", "release"]
