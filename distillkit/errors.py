"""Errors with messages that say what is wrong, which option to change, and what exists.

The CLI maps `BadInput` (and subclasses) to exit code 2 and every other
`DistillkitError` to exit code 1, printing one line without a traceback.
"""

from __future__ import annotations


class DistillkitError(Exception):
    """Base class: a failure the user can act on. Exit code 1 (runtime failure)."""

    exit_code = 1


class BadInput(DistillkitError):
    """The user's input or configuration is wrong. Exit code 2."""

    exit_code = 2


class ConfigError(BadInput):
    """Unknown keys, wrong types or values in a stage configuration."""


class DataError(BadInput):
    """The data set is missing, empty, or lacks a required column."""


class ModelError(BadInput):
    """A model path is not a model, or teacher and student are incompatible."""


class TokenizerMismatch(ModelError):
    """Teacher and student do not share a tokenizer."""


class ArtifactError(BadInput):
    """An artifact is incomplete, of another kind, tampered with or stale."""


class OutputExists(BadInput):
    """The output directory holds a run with a different configuration."""


class EngineUnavailable(BadInput):
    """The requested inference engine cannot be used here."""


class ArtifactLocked(BadInput):
    """Another process (alive) holds the lock of the output artifact: two writers never share one."""


class DamagedOutput(OutputExists):
    """The output holds a complete artifact of this config whose files no longer match its manifest."""


class DiskFull(DistillkitError):
    """No space left on the device while writing; the unfinished file is removed, earlier work is kept. Exit code 1."""


def is_disk_full(exc: BaseException, path: object = None) -> bool:
    """Whether `exc`, raised while writing `path`, means the disk (or the quota) is full.

    OSError carries ENOSPC/EDQUOT; libraries that wrap it keep the text ("No space left on device",
    Rust's "StorageFull"); torch.save only says "unexpected pos" or "file write failed", which counts
    when the disk holding `path` has (almost) nothing left.
    """
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if any(s in text for s in ("No space left on device", "StorageFull", "Disk quota exceeded")):
        return True
    if path is not None and any(s in text for s in ("unexpected pos", "file write failed")):
        import shutil
        from pathlib import Path

        p = Path(str(path))
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            return shutil.disk_usage(p).free < (64 << 20)
        except OSError:
            return False
    return False
