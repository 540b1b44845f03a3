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
