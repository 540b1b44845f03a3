"""What every stage's `run(cfg)` returns: whether it ran, was skipped (complete for this config) or resumed,
and the manifest of the artifact it leaves, so a caller (the CLI, a recipe, a study) never re-reads or
hashes the output to find out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from distillkit.artifacts import ArtifactWriter

Status = Literal["ran", "skipped", "resumed"]


@dataclass(frozen=True)
class StageResult:
    stage: str  # the artifact kind: prune, score, plan, train, eval
    status: Status
    path: Path
    manifest: dict[str, Any]

    @property
    def figures(self) -> dict[str, Any]:
        return self.manifest.get("figures", {})


def result(writer: "ArtifactWriter", say: bool = True) -> StageResult:
    """The outcome of a stage whose `writer` has finished, or found its artifact complete (`writer.done`)."""
    from distillkit.artifacts import MANIFEST

    if writer.done and say:
        from distillkit.progress import console

        console.print(f"[green]{writer.kind}[/] {writer.out} is complete for this config: nothing to do")
    status: Status = "skipped" if writer.done else ("resumed" if writer.resumed else "ran")
    manifest = json.loads((writer.out / MANIFEST).read_text(encoding="utf-8"))
    return StageResult(writer.kind, status, writer.out, manifest)


__all__ = ["StageResult", "Status", "result"]
