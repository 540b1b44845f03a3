"""Data shipped with distillkit: the demo corpus (see README.md here for sources and licenses)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DATA_ALIASES = {"demo": ASSETS / "demo_corpus.parquet"}


def resolve_data(spec: str) -> str:
    """Map a data alias ('demo') to its packaged file; anything else is returned unchanged."""
    p = DATA_ALIASES.get(spec)
    return str(p) if p is not None else spec
