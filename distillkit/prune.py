"""Depth pruning (Minitron-style): a student made from the teacher by keeping a subset of its decoder layers.

Which layers to drop matters enormously: for SmolLM2-135M, dropping every other layer or the second half
gives perplexity > 1e4, while dropping the contiguous deep-middle block 16-22 (keeping 23 of 30) gives ~250
against the teacher's ~30, a student that a short distillation run visibly repairs (docs ASSETS.md).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from distillkit.errors import ConfigError, ModelError, OutputExists

PRUNE_FILE = "distillkit-prune.json"


def parse_layers(expr: str, n_layers: int) -> list[int]:
    """Layer numbers from "16-22" or "0,2,4-6" (inclusive ranges), sorted and without repeats."""
    valid = f"valid layers are 0-{n_layers - 1}" if n_layers > 0 else "the model has no layers"
    layers: set[int] = set()
    parts = [p.strip() for p in str(expr).split(",")]
    if not any(parts):
        raise ConfigError(f"layer list {expr!r} is empty: give numbers or ranges like 16-22 or 0,2,4-6 ({valid})")
    for part in parts:
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ConfigError(f"layer list {expr!r}: {part!r} is not a layer number or a range a-b ({valid})") from None
        if lo > hi:
            raise ConfigError(f"layer list {expr!r}: range {part!r} runs backwards; write {hi}-{lo} ({valid})")
        if lo < 0 or hi >= n_layers:
            raise ConfigError(f"layer list {expr!r}: {part!r} is out of range ({valid})")
        layers.update(range(lo, hi + 1))
    return sorted(layers)


def _decoder_layers(model):
    import torch.nn as nn

    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"cannot depth-prune {type(model).__name__}: only llama-style models with "
                         "model.model.layers (Llama, Qwen, Mistral, Gemma 3, SmolLM, ...) are supported")
    return layers


def _is_per_layer_list(name: str) -> bool:
    # Per-layer *value* lists (one entry per decoder layer) to slice along with the layers. Lists of layer
    # *indices* (e.g. mlp_only_layers) would need remapping; the supported llama/gemma3 configs have none.
    return name == "layer_types" or name.endswith("_layer_types") or name.endswith("_per_layer") \
        or name == "no_rope_layers"


def prune_depth(model, keep: list[int]) -> None:
    """Keep only the decoder layers `keep` (in their original order), in place, and make the config agree."""
    import torch.nn as nn

    layers = _decoder_layers(model)
    n = len(layers)
    keep = sorted(set(keep))
    if not keep:
        raise ConfigError("pruning would keep no decoder layers: keep at least one")
    if keep[0] < 0 or keep[-1] >= n:
        raise ConfigError(f"layers {keep} are out of range: the model has layers 0-{n - 1}")
    model.model.layers = nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(model.model.layers):
        # layer_idx picks the layer's slot in the KV cache, so it must be the new position.
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    configs = {id(model.config): model.config}
    text = model.config.get_text_config()
    configs.setdefault(id(text), text)
    for cfg in configs.values():
        if getattr(cfg, "num_hidden_layers", None) != n:
            continue
        cfg.num_hidden_layers = len(keep)
        for name, value in list(vars(cfg).items()):
            if isinstance(value, (list, tuple)) and len(value) == n and _is_per_layer_list(name):
                setattr(cfg, name, type(value)(value[i] for i in keep))


def prune_model(src_spec: str, out: str | os.PathLike, keep_layers: str | None = None,
                drop_layers: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Load `src_spec` (fp32), depth-prune it and save it with its tokenizer as a model directory `out`.

    Exactly one of `keep_layers` / `drop_layers` (layer lists as in parse_layers). Writes `out` whole or not
    at all; a non-empty `out` is refused unless `overwrite`. Returns what it records in distillkit-prune.json.
    (`distillkit prune` runs the prune stage, `distillkit.pipelines.prune`, which writes the same directory
    as an artifact with a manifest.)
    """
    if (keep_layers is None) == (drop_layers is None):
        raise ConfigError("give exactly one of keep_layers (e.g. 0-15,23-29) or drop_layers (e.g. 16-22)")
    from distillkit.artifacts import output_dir

    out = output_dir(Path(out).expanduser())  # a symlinked `out`: written in its target, the link stays
    if out.parent.is_dir():  # a killed prune_model left its temp copy of the weights (its pid is in the name)
        from distillkit.cache import remove_stale_tmp

        remove_stale_tmp(out.parent, out.name, tags=("tmp", "old"))
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExists(f"{out} already exists and is not empty: choose another output or pass overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        record = write_pruned(src_spec, tmp, keep_layers=keep_layers, drop_layers=drop_layers)
        if out.exists():
            os.replace(out, old)  # overwrite (or an empty dir): swap the old one out only once the new is whole
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_file():
            old.unlink()
        shutil.rmtree(old, ignore_errors=True)
    return record


def write_pruned(src_spec: str, dest: str | os.PathLike, keep_layers: str | None = None,
                 drop_layers: str | None = None) -> dict[str, Any]:
    """Prune `src_spec` and write the model, its tokenizer and `PRUNE_FILE` into the directory `dest` (no swap)."""
    from distillkit import __version__
    from distillkit.models import load_model, load_tokenizer, resolve_model

    if (keep_layers is None) == (drop_layers is None):
        raise ConfigError("give exactly one of keep_layers (e.g. 0-15,23-29) or drop_layers (e.g. 16-22)")
    src_dir = resolve_model(src_spec, role="model", option="--model")
    model = load_model(src_spec, dtype="float32", role="model", option="--model")
    tok = load_tokenizer(src_spec)
    n = len(_decoder_layers(model))
    if keep_layers is not None:
        keep = parse_layers(keep_layers, n)
    else:
        dropped = set(parse_layers(drop_layers, n))
        keep = [i for i in range(n) if i not in dropped]
        if not keep:
            raise ConfigError(f"drop_layers {drop_layers!r} drops all {n} layers: keep at least one")
    params_before = model.num_parameters()
    prune_depth(model, keep)
    record = {
        "source": str(src_spec),
        "source_dir": str(src_dir),
        "source_layers": n,
        "kept_layers": keep,
        "dropped_layers": [i for i in range(n) if i not in keep],
        "layers": len(keep),
        "params_before": params_before,
        "params_after": model.num_parameters(),
        "distillkit_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    dest = Path(dest)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    (dest / PRUNE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
