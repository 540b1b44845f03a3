"""Typed stage configs: defaults < config file < --set key=value < explicit options.

Every stage has one frozen dataclass whose fields carry their help text (and the ``--help`` panel they
are listed under) in ``opt(default, help, panel=...)``. A field may instead hold a nested frozen
dataclass declared with ``group(Cls)`` (e.g. the data options shared by score and eval): its fields are
keys at the top level under their own names, so config files, ``--set``, options, `to_dict` and the
command line never see the nesting. `resolve` merges the four sources, coerces strings to the
declared types, and raises one `ConfigError` listing *every* problem (unknown keys come with
close-match suggestions).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from distillkit.errors import ConfigError

C = TypeVar("C")

_MISSING = object()


Identity = Any  # True | False | "non-default" | Callable[[config], bool]


def opt(default: Any, help: str, *, panel: str | None = None, identity: Identity = True, **kw: Any) -> Any:
    """A dataclass field with help text (shown by ``--help`` and ``--print-config``), its ``--help`` panel, and
    whether it is part of the stage artifact's identity (`identity(cfg)`, what a finished artifact must match):

    - ``True`` (default): always;
    - ``False``: never (where the output goes, how fast, how it is displayed);
    - ``"non-default"``: only when set to something other than its default, so that artifacts made before the
      option existed keep their identity;
    - a callable ``cfg -> bool``: only when it holds (e.g. a setting that only matters while another is on).
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults in frozen configs")
    if not (isinstance(identity, bool) or identity == "non-default" or callable(identity)):
        raise TypeError(f"identity must be True, False, 'non-default' or a callable, got {identity!r}")
    meta = {"help": help, **kw}
    if identity is not True:
        meta["identity"] = identity
    if panel is not None:
        meta["panel"] = panel
    return dataclasses.field(default=default, metadata=meta)


def group(cls: type) -> Any:
    """A field holding a nested config group (a frozen dataclass) whose keys are flattened into the parent's."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"group() takes a dataclass, got {cls!r}")
    return dataclasses.field(default_factory=cls, metadata={"group": True})


@dataclasses.dataclass(frozen=True)
class Key:
    """One flat config key: a leaf field of a config class, however deep in its groups it is declared."""

    name: str
    type: Any  # the resolved annotation
    field: dataclasses.Field
    path: tuple[str, ...]  # attribute names from the top config down to the field, e.g. ("data_opts", "seed")

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def panel(self) -> str | None:
        return self.field.metadata.get("panel")

    @property
    def default(self) -> Any:
        """The declared default, or `_MISSING` for a required key."""
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _group_type(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


@functools.cache
def keys(cls: type) -> dict[str, Key]:
    """Every flat key of config class `cls` in declaration order, nested groups inlined where they are declared.

    A group key that repeats a key of its parent (or of another group) is a `TypeError`: one name has to
    mean one setting in files, ``--set`` and options alike.
    """
    out: dict[str, Key] = {}

    def walk(c: type, path: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            sub = _group_type(hints[f.name])
            if sub is not None:
                walk(sub, (*path, f.name))
                continue
            if f.name in out:
                where = ".".join(out[f.name].path)
                raise TypeError(f"config key {f.name!r} of {cls.__name__} is declared twice ({where} and "
                                f"{'.'.join((*path, f.name))}); rename one of them")
            out[f.name] = Key(f.name, hints[f.name], f, (*path, f.name))

    walk(cls, ())
    return out


def field_help(cls: type) -> dict[str, str]:
    return {k: key.help for k, key in keys(cls).items()}


def _build(cls: type[C], values: Mapping[str, Any]) -> C:
    """Instantiate `cls` (and its groups) from flat key -> value; absent keys keep their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        sub = _group_type(hints[f.name])
        if sub is not None:
            kwargs[f.name] = _build(sub, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def pick(cls: type[C], config: Mapping[str, Any]) -> C:
    """A `cls` from the keys of `config` that `cls` declares (e.g. a stage's recorded config dict); other
    keys are ignored and missing ones keep `cls`'s defaults. Values are coerced to the declared types."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, key in keys(cls).items():
        if name in config:
            try:
                values[name] = coerce(config[name], key.type, name)
            except ConfigError as e:
                problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
    return _build(cls, values)


def _problems(cfg: Any) -> list[str]:
    """Non-finite numbers, then validate() of every nested group, then of `cfg` itself."""
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out += _problems(v)
        elif any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, (tuple, list)) else (v,))):
            out.append(f"{f.name} must be a finite number, got {v!r}")
    validate = getattr(cfg, "validate", None)
    return out + (list(validate()) if validate is not None else [])


def check(cfg: Any) -> None:
    """Refuse a config built without `resolve` (the library API) that `resolve` would refuse: one `ConfigError`."""
    problems = _problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


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
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
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
    fields = keys(cls)
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
                values[key] = coerce(raw, fields[key].type, key)
            except ConfigError as e:
                problems.append(str(e))
    for name, k in fields.items():
        if name not in values and k.required:
            problems.append(f"{name} is required (set it with {k.option} or in --config)")
    if problems:
        raise ConfigError("; ".join(problems))
    cfg = _build(cls, values)
    problems = _problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The flat key -> value dict of a config (groups inlined where declared): what manifests record and hash."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(to_dict(v))
        else:
            out[f.name] = conv(v)
    return out


def identity(cfg: Any) -> dict[str, Any]:
    """The config keys that make a stage artifact what it is (`to_dict` values), each as its option declares
    (`opt(identity=...)`): one rule for every stage, no hand-kept skip lists; the stage adds its inputs' own
    fingerprints."""
    values = to_dict(cfg)
    out: dict[str, Any] = {}
    for name, key in keys(type(cfg)).items():
        rule = key.field.metadata.get("identity", True)
        if rule is False:
            continue
        if rule == "non-default" and not key.required and values[name] == to_dict_value(key.default):
            continue
        if callable(rule) and not rule(cfg):
            continue
        out[name] = values[name]
    return out


def to_dict_value(v: Any) -> Any:
    """A value as `to_dict` records it (tuples as lists, paths as strings)."""
    if isinstance(v, tuple):
        return [to_dict_value(x) for x in v]
    return str(v) if isinstance(v, Path) else v


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
