"""The model card (README.md, Hugging Face's format) of every model `distillkit train` writes.

YAML front matter through `huggingface_hub.ModelCardData` (``base_model``: the student it started from,
``tags: [distillation, distillkit]``, ``library_name: transformers``, ``datasets`` when the data is a named
set), then what a reader asks first: distilled from which teacher (a corrected teacher says so), on what data
and split, how (loss, T/λ schedule, mixture, steps, tokens, precision), the held-out before/after figures, and
the command that reproduces it. README.md is not part of a model's fingerprint (`models.model_fingerprint`).
`add_eval` adds (or replaces) an "Evaluation" section in such a card; `distillkit eval` does not call it yet,
because the card is a file of the train artifact, whose manifest records its sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CARD = "README.md"
_EVAL_START = "<!-- distillkit-eval -->"
_EVAL_END = "<!-- /distillkit-eval -->"


def train_card(model_dir: Path, *, base_model: str, teacher: str | None, teacher_provenance: dict[str, Any] | None,
               data: str, data_format: str, train: dict[str, Any], figures: dict[str, Any], heldout: list[dict[str, Any]],
               command: str) -> Path:
    """Write `model_dir`/README.md for a finished train run; returns its path."""
    from huggingface_hub import ModelCard, ModelCardData

    loss = train.get("loss", {})
    sft = train.get("objective") == "sft"
    stages = train.get("stages", [])
    data_name = Path(str(data)).stem if data else None
    card_data = ModelCardData(base_model=str(base_model), tags=["distillation", "distillkit"], library_name="transformers",
                              datasets=[data_name] if data_name else None)
    if sft:
        how = "fine-tuned with plain cross-entropy on the training split (no teacher: `train --teacher-mode none`)"
    else:
        corrected = " (a corrected teacher: itself fine-tuned on the distillation data first)" if (
            teacher_provenance or {}).get("corrected") else ""
        how = f"distilled from `{teacher}`{corrected} with {loss.get('kind')} ({loss.get('form')} form, teacher {loss.get('teacher_mode')})"
    lines = [f"# {Path(model_dir).parent.name or 'student'}", "",
             f"This model is `{base_model}` {how}, by [distillkit](https://pypi.org/project/distillkit/).", "",
             "## Training", "",
             f"- data: `{data}` ({data_format}); trained on the `train` split only — the dev split decided what was "
             "decided during the run, the test split is what is reported",
             f"- steps: {figures.get('steps')}, precision: {figures.get('precision')}, tokens/s: {figures.get('tokens_per_s')}, "
             f"wall: {figures.get('wall_s')} s",
             f"- learning rate: {train.get('lr', {}).get('peak')} ({train.get('lr', {}).get('why', '')})",
             f"- mixture: {train.get('mixture', {}).get('mode')}; stages: {len(stages)}"
             + ("".join(f"; stage {s['stage']}: steps {s['start']}–{s['end']}, T {s['temperature']:.2f}, λ {s['kd_weight']:.2f}"
                        for s in stages[:8]) if not sft else ""),
             ""]
    if heldout:
        lines += ["## Held-out (test split) before → after", "", "| domain | student ppl before | after |", "|---|---:|---:|"]
        lines += [f"| {r['domain']} | {r['student_ppl_before']:.2f} | {r['student_ppl_after']:.2f} |" for r in heldout]
        lines += [""]
    lines += ["## Reproduce", "", "```bash", command, "```", ""]
    card = ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))
    path = Path(model_dir) / CARD
    card.save(str(path))
    return path


def add_eval(model_dir: str | Path, label: str, rows: list[dict[str, Any]], eval_dir: str) -> bool:
    """Add or replace the card's "Evaluation" section with `rows` (metric, task, value); False when `model_dir` has
    no distillkit card (a model distillkit did not train)."""
    path = Path(model_dir) / CARD
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if "distillkit" not in text.split("---", 2)[1] if text.startswith("---") else True:
        return False
    body = [_EVAL_START, "## Evaluation", "", f"`distillkit eval` → `{eval_dir}` (as `{label}`):", "",
            "| task | metric | value |", "|---|---|---:|"]
    body += [f"| {r['task']} | {r['metric']} | {r['value']:.4g} |" for r in rows if r.get("value") is not None]
    body += ["", _EVAL_END]
    block = "\n".join(body)
    if _EVAL_START in text and _EVAL_END in text:
        head, rest = text.split(_EVAL_START, 1)
        text = head + block + rest.split(_EVAL_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    return True


__all__ = ["CARD", "train_card", "add_eval"]
