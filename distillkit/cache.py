"""The local model cache: where converted and generated models live, and how a cache entry is built once.

Both `models` (GGUF conversions) and `tiny` (tiny random models) build entries here; keeping these
helpers apart from both lets `models` resolve tiny specs without `tiny` importing `models` back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    """Where converted models live: $DISTILLKIT_CACHE, else ~/.cache/distillkit."""
    env = os.environ.get("DISTILLKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distillkit"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(parent: Path, name: str, tags: tuple[str, ...] = ("tmp",)) -> None:
    """Delete ``.<name>.<tag><pid>`` dirs (or files) left by killed builds: their pid no longer runs."""
    for tag in tags:
        for tmp in parent.glob(f".{name}.{tag}*"):
            pid = tmp.name.rsplit(f".{tag}", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)



def build_cached_dir(dest: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Build a cache directory at most once: `build(tmp)` fills a private temp dir (which must end by
    writing `marker`), then it is renamed into place. A killed build leaves only its temp dir, removed by
    the next build; a concurrent build that finished first wins."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(dest.parent, dest.name)
    tmp = dest.parent / f".{dest.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


__all__ = ["cache_dir", "build_cached_dir", "remove_stale_tmp"]
