"""Checkpoints that survive SIGKILL: ``<dir>/step-00000050/{model,optimizer,trainer}.pt`` + ``state.json``.

A checkpoint is written into a temp directory (``.step-….tmp<pid>``), its files fsynced, then
renamed into place; one that is rotated out (or replaced) is first renamed aside (``.step-….old<pid>``)
and only then deleted. So a directory named ``step-*`` is always complete, and a kill leaves at most a
hidden temp or renamed-aside directory, which the next save deletes, as `sweep` does on start and resume
together with any incomplete ``step-*`` older than the newest complete one (a damaged copy, or one left by
an older distillkit that deleted in place); a finished run sweeps every incomplete one, so the train
artifact never lists a file of one. ``trainer.pt`` holds everything that is not
model or optimizer -- ``TrainState.state_dict()`` (`distillkit.training.state`): step, sampler
position, mixture state and history, TAID state, the metrics and drawn batches so far, the
"before" held-out report and the RNG states -- all plain types and tensors, so it loads with
``torch.load(weights_only=True)``. ``state.json`` is a readable summary.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.artifacts import remove_path, writing
from distillkit.errors import ArtifactError

PREFIX = "step-"
FILES = ("model.pt", "optimizer.pt", "trainer.pt")


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and all((p / f).is_file() for f in FILES):
            out.append((int(p.name[len(PREFIX):]), p))
    return sorted(out)


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def describe_latest(root: Path) -> str:
    """'the last complete checkpoint (step N, DIR)', or that there is none yet: for messages about what is kept."""
    last = latest_checkpoint(root)
    return f"the last complete checkpoint (step {last[0]}, {last[1]})" if last else "no checkpoint (none was complete yet)"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale(root: Path) -> None:
    """Delete what a run killed while saving left: temp directories of checkpoints being written, and old ones
    renamed aside to be deleted (only one process writes under `root`: its output's lock)."""
    root = Path(root)
    if root.is_dir():
        for pattern in (f".{PREFIX}*.tmp*", f".{PREFIX}*.old*"):
            for p in root.glob(pattern):
                remove_path(p)


def _is_step_dir(p: Path) -> bool:
    return p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()


def sweep(root: Path, finished: bool = False) -> list[Path]:
    """On start and resume: remove the leftovers of dead runs (`remove_stale`) and every incomplete ``step-*``
    directory older than the newest complete checkpoint (nothing resumes from it, and the train artifact would
    list its files); with `finished` (the run's last checkpoint is written) every incomplete one. Returns the
    incomplete checkpoints removed."""
    root = Path(root)
    remove_stale(root)
    if not root.is_dir():
        return []
    complete = {p for _, p in list_checkpoints(root)}
    newest = max((int(p.name[len(PREFIX):]) for p in complete), default=-1)
    removed = []
    for p in sorted(root.iterdir()):
        if _is_step_dir(p) and p not in complete and (finished or int(p.name[len(PREFIX):]) < newest):
            _delete(p)
            removed.append(p)
    return removed


def _delete(path: Path) -> None:
    """Delete a checkpoint directory without ever leaving it half-deleted under its own name: rename it aside
    (``.step-N.old<pid>``, atomic), then delete that; a kill in between leaves only the hidden copy."""
    aside = path.with_name(f".{path.name}.old{os.getpid()}")
    remove_path(aside)
    os.replace(path, aside)
    remove_path(aside)


def save_checkpoint(root: Path, step: int, model: dict[str, Any], optimizer: dict[str, Any], trainer: dict[str, Any],
                    summary: dict[str, Any], keep: int = 1) -> Path:
    """Write a checkpoint atomically and keep only the newest `keep` (>= 1)."""
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    # a half-written checkpoint is removed, so it does not keep filling the disk
    with writing(tmp, tmp, label=f"checkpoint {final}", unfinished="checkpoint", kept=f"{describe_latest(root)} is kept"):
        tmp.mkdir()
        for name, obj in zip(FILES, (model, optimizer, trainer)):
            with open(tmp / name, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        (tmp / "state.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        _fsync_dir(tmp)
    replaced = final.with_name(f".{final.name}.old{os.getpid()}")
    if final.exists():  # a checkpoint of this step from an earlier run: swapped out whole, then deleted
        remove_path(replaced)
        os.replace(final, replaced)
    os.replace(tmp, final)
    _fsync_dir(root)
    remove_path(replaced)
    for _, old in list_checkpoints(root)[: -max(keep, 1)]:
        _delete(old)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model, optimizer, trainer) states of a checkpoint directory, on CPU."""
    import torch

    path = Path(path)
    try:
        return tuple(torch.load(path / f, map_location="cpu", weights_only=True) for f in FILES)  # type: ignore[return-value]
    except Exception as e:  # noqa: BLE001 - any unreadable file means a damaged checkpoint
        raise ArtifactError(f"checkpoint {path} is damaged ({type(e).__name__}: {e}); delete it to resume from an earlier one") from e


# ---------------------------------------------------------------- RNG states as plain types


def rng_state() -> dict[str, Any]:
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["checkpoint_dir", "list_checkpoints", "latest_checkpoint", "describe_latest", "save_checkpoint", "load_checkpoint",
           "remove_stale", "sweep", "rng_state", "set_rng_state", "FILES"]
