"""Typed stage configs: defaults < config file < --set key=value < explicit options.

Every stage has one frozen dataclass whose fields carry their help text in
``field(metadata={"help": ...})``. `resolve` merges the four sources, coerces
strings to the declared types, and raises one `ConfigError` listing *every*
problem (unknown keys come with close-match suggestions).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from distillkit.errors import ConfigError

C = TypeVar("C")

_MISSING = object()


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (shown by ``--help`` and ``--print-config``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults in frozen configs")
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def load_file(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """Read a TOML or YAML config. If it has a table named `section`, use that table."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (pass an existing TOML or YAML file to --config)")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            import tomllib

            data = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - re-raised as a one-line config error
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot parse config file {p}: {first}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a table of key = value pairs")
    if section and isinstance(data.get(section), dict):
        data = data[section]
    return dict(data)


def parse_sets(sets: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in sets or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from a file, --set or an option) to the annotated type `tp`."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        errors = []
        for a in args:
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value):
                return c
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    if origin in (tuple, list):
        (inner, *_rest) = get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(coerce(v, inner, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def resolve(
    cls: type[C],
    file: str | Path | None = None,
    sets: list[str] | tuple[str, ...] | None = None,
    options: dict[str, Any] | None = None,
    section: str | None = None,
) -> C:
    """Build a `cls` config from defaults < file < --set < explicit options (None = not given)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    layers: list[tuple[str, dict[str, Any]]] = []
    if file is not None:
        layers.append((f"--config {file}", load_file(file, section)))
    layers.append(("--set", parse_sets(sets)))
    layers.append(("options", {k: v for k, v in (options or {}).items() if v is not None}))

    values: dict[str, Any] = {}
    problems: list[str] = []
    for origin, layer in layers:
        for key, raw in layer.items():
            key = key.replace("-", "_")
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
                hint = f" (did you mean {' or '.join(close)}?)" if close else f" (known keys: {', '.join(sorted(fields))})"
                problems.append(f"unknown key {key!r} in {origin}{hint}")
                continue
            try:
                values[key] = coerce(raw, hints[key], key)
            except ConfigError as e:
                problems.append(str(e))
    for name, f in fields.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{name} is required (set it with --{name.replace('_', '-')} or in --config)")
    if problems:
        raise ConfigError("; ".join(problems))
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        problems = list(validate())
        if problems:
            raise ConfigError("; ".join(problems))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return {f.name: conv(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_sha256(cfg_dict: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg_dict, sort_keys=True, default=str).encode()).hexdigest()


def to_toml(cfg: Any, section: str | None = None) -> str:
    """Render a resolved config as TOML with each field's help as a comment."""
    helps = field_help(type(cfg))
    lines = [f"[{section}]"] if section else []
    for key, value in to_dict(cfg).items():
        if helps.get(key):
            lines.append(f"# {helps[key]}")
        if value is None:
            lines.append(f"# {key} = (unset)")
        else:
            lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"
