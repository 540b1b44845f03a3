"""`distillkit prune`: a student made from the teacher by depth pruning (Minitron-style), as a stage.

The output is both a Hugging Face model directory (``save_pretrained`` + tokenizer: every stage and
plain transformers / vLLM load it) and an artifact: written into ``<out>.partial``, ``manifest.json``
last, then swapped into ``<out>``. Re-running with the same config is a no-op; a different config is
refused unless ``--overwrite``. ``distillkit-prune.json`` beside the weights records the layers kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from distillkit.config import opt, to_dict
from distillkit.pipelines.stage import StageResult, result

KIND = "prune"


@dataclass(frozen=True)
class PruneConfig:
    model: str = opt(None, "Model to prune (usually the teacher): HF directory, .gguf file, or alias (smollm2-135m).",
                     panel="models")
    out: str = opt(None, "Output directory: the pruned student (HF format) and its manifest.", panel="output")
    drop_layers: str | None = opt(None, "Decoder layers to drop, e.g. 16-22 (give this or keep_layers).", panel="pruning")
    keep_layers: str | None = opt(None, "Decoder layers to keep, e.g. 0-15,23-29 (give this or drop_layers).", panel="pruning")

    def validate(self) -> list[str]:
        problems = [f"{n} is required (--{n.replace('_', '-')})" for n in ("model", "out") if not getattr(self, n)]
        if (self.drop_layers is None) == (self.keep_layers is None):
            problems.append("give exactly one of drop_layers (e.g. 16-22) or keep_layers (e.g. 0-15,23-29)")
        return problems


def run(cfg: PruneConfig, resume: bool = False, overwrite: bool = False) -> StageResult:
    """Prune `cfg.model` into `cfg.out`. `resume` is accepted like every stage's; pruning is one step, so an
    interrupted run (a ``.partial`` directory) is simply redone."""
    from pathlib import Path

    from distillkit.artifacts import MANIFEST, RUN_STATE, ArtifactWriter, partial_dir
    from distillkit.errors import OutputExists
    from distillkit.models import model_fingerprint, resolve_model
    from distillkit.progress import console
    from distillkit.prune import PRUNE_FILE, write_pruned

    out = Path(cfg.out)
    if (out / PRUNE_FILE).is_file() and not (out / MANIFEST).is_file() and not overwrite:
        raise OutputExists(f"{out} holds a student pruned by an earlier distillkit (no {MANIFEST}); pass --overwrite "
                           "to prune it again as an artifact, or choose another --out")
    ident = {**to_dict(cfg), "source_fingerprint": model_fingerprint(resolve_model(cfg.model, role="model", option="--model"))}
    ident.pop("out")
    if partial_dir(out).exists() and not overwrite:
        resume = True  # nothing in a half-written prune is worth keeping, but the writer refuses a partial without it
    writer = ArtifactWriter(out, KIND, ident, resume=resume, overwrite=overwrite)
    if writer.done:
        return result(writer)
    for p in writer.partial.iterdir():  # a resumed prune starts over inside its partial directory
        if p.is_file() and p.name != RUN_STATE:
            p.unlink()
    record = write_pruned(cfg.model, writer.partial, keep_layers=cfg.keep_layers, drop_layers=cfg.drop_layers)
    figures = {k: record[k] for k in ("layers", "source_layers", "params_before", "params_after")}
    from distillkit.records import PruneRecord

    kept = PruneRecord(source=str(record["source"]), source_dir=str(record["source_dir"]),
                       kept_layers=tuple(record["kept_layers"]), dropped_layers=tuple(record["dropped_layers"]))
    writer.finish(figures, extra={"prune": kept.to_manifest()})
    console.print(f"[green]prune[/] {cfg.model}: kept {record['layers']} of {record['source_layers']} layers "
                  f"({record['params_after']:,} parameters) -> {out}")
    return result(writer)


__all__ = ["PruneConfig", "run", "KIND"]
