"""A stage command's options, generated from its config dataclass: one source of truth per option.

`stage_command(ScoreConfig, "score")` turns every flat config key (`distillkit.config.keys`: nested
groups such as `DataOptions` are inlined) into one Typer option named ``--<key-with-dashes>``:

- type from the annotation: int / float / str as such; ``Literal[...]`` as a choice whose values the
  metavar lists in ``--help`` (``<fkl|rkl|...>``) and which `resolve` checks, so a bad value gets the
  same one-line error (exit 2) from an option, a file or ``--set``; bool as ``--x/--no-x``; a tuple as
  a repeatable option whose values may also be comma lists (what `distillkit.config.coerce` does with
  a string); ``X | None`` as X;
- help = the field's help, listed under the field's ``panel`` (``opt(..., panel="loss")``), with the
  field's default shown;
- default None = "not given", so `distillkit.config.resolve` keeps its precedence
  defaults < ``--config`` < ``--set`` < options.

Typer reads a command's parameters from ``inspect.signature(callback)``; the generated callback is a
``**kwargs`` function whose ``__signature__`` lists the options, and it hands the body a `StageArgs`.
Nothing heavy is imported here: only the config classes, whose modules import no torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, List, Literal, Optional, get_args, get_origin

import typer

from distillkit.cli.common import handled
from distillkit.config import Key, keys

# Panels in --help, in this order; a panel not listed here comes after these (first use first).
PANEL_ORDER = ("inputs", "models", "data", "curriculum", "schedule", "loss", "optimizer", "mixture", "held-out", "scoring",
               "benchmarks", "generation", "pruning", "shards", "output", "runtime")
DEFAULT_PANEL = "options"
_TAIL = ("config", "set_", "print_config", "resume", "overwrite")


def panel_title(panel: str) -> str:
    return panel[:1].upper() + panel[1:]


@dataclasses.dataclass(frozen=True)
class Extra:
    """An option of one command that is not a config key (score's --merge): passed to the body in `StageArgs.extras`."""

    name: str  # the parameter name the body reads
    annotation: Any  # e.g. Optional[List[str]]; its default is always None
    decls: tuple[str, ...]  # option names, e.g. ("--merge",)
    help: str
    panel: str = DEFAULT_PANEL
    metavar: str | None = None


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """What a generated command hands its body: the given options and the common tail."""

    cls: type
    section: str
    options: dict[str, Any]  # config key -> value as typed (None: not given); `resolve` coerces and validates it
    config: str | None
    sets: list[str] | None
    print_config: bool
    resume: bool
    overwrite: bool
    extras: dict[str, Any]

    def resolve(self) -> Any:
        """The resolved config (defaults < --config < --set < options); with --print-config prints it and exits."""
        from distillkit.cli.common import resolve_or_print

        return resolve_or_print(self.cls, self.config, self.sets, self.options, self.print_config, self.section)


@dataclasses.dataclass(frozen=True)
class _Option:
    """One generated parameter: a config key's option or one of its hidden old spellings."""

    param: str  # the Python parameter name Typer passes the value under
    key: Key
    annotation: Any
    decls: tuple[str, ...]
    is_tuple: bool


def _strip_none(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp!r}: a config key has one type (or that type | None)")
        return args[0]
    return tp


def _annotation(key: Key) -> tuple[Any, bool]:
    """The option's annotation (always optional: None = not given) and whether it is a tuple key."""
    tp = _strip_none(key.type)
    origin = get_origin(tp)
    if origin in (tuple, list):
        return Optional[List[str]], True  # each value is a comma list, as `coerce` reads a string
    if origin is Literal:
        if not all(isinstance(c, str) for c in get_args(tp)):
            raise TypeError(f"{key.name}: only Literal[...] of strings can be a command-line choice, got {tp!r}")
        # A str whose choices the metavar lists: `resolve` then rejects a bad value the way it rejects one from a
        # file or --set ("error: loss must be one of 'fkl', ...", exit 2, one line) rather than Typer's framed usage error.
        return Optional[str], False
    if tp in (bool, int, float, str):
        return Optional[tp], False
    raise TypeError(f"{key.name}: no command-line option for type {tp!r}; give it a supported type (see distillkit/cli/options.py)")


def _metavar(key: Key) -> str | None:
    tp = _strip_none(key.type)
    if get_origin(tp) is Literal:
        return "<" + "|".join(get_args(tp)) + ">"
    if get_origin(tp) in (tuple, list):
        (inner, *_rest) = get_args(tp) or (str,)
        return f"<{getattr(inner, '__name__', 'str')},...>"
    return None


def _default_text(key: Key) -> str | None:
    """The default as a config file writes it, for --help (None: nothing worth showing)."""
    d = key.default
    if d is None or d == () or key.required:
        return None
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, tuple):
        return ",".join(map(str, d))
    return str(d)


# Rich markup: help text is rendered as markup, so a "[word]" in a help string would vanish (same rule as rich.markup.escape).
_MARKUP = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def _escape(text: str) -> str:
    return _MARKUP.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", text)


def _decls(key: Key, names: Sequence[str], is_bool: bool) -> tuple[str, ...]:
    if not is_bool:
        return tuple(names)
    flags = [n for n in names if n.startswith("--")]
    if len(flags) != 1 or any(not n.startswith("--") for n in names):
        raise TypeError(f"{key.name}: a flag takes exactly one long name (it gets --no-...), got {names}")
    flag = flags[0]
    return (flag if "/" in flag else f"{flag}/--no-{flag[2:]}",)


def _options(cls: type, short: Mapping[str, str], aliases: Mapping[str, Sequence[str]]) -> list[_Option]:
    ks = keys(cls)
    unknown = sorted((set(short) | set(aliases)) - set(ks))
    if unknown:
        raise TypeError(f"{cls.__name__} has no key(s) {', '.join(unknown)} (short names and aliases name config keys)")
    out: list[_Option] = []
    for name, key in ks.items():
        annotation, is_tuple = _annotation(key)
        is_bool = _strip_none(key.type) is bool
        names = [key.option] + ([short[name]] if name in short else [])
        out.append(_Option(name, key, annotation, _decls(key, names, is_bool), is_tuple))
        for i, old in enumerate(aliases.get(name, ())):
            out.append(_Option(f"{name}__old{i}", key, annotation, _decls(key, [old], is_bool), is_tuple))
    return out


def _panel_rank(panels: list[str]) -> dict[str, int]:
    rank = {p: i for i, p in enumerate(PANEL_ORDER)}
    for p in panels:
        rank.setdefault(p, len(rank))
    return rank


def _tail() -> list[tuple[str, Any, Any]]:
    """The options every stage command has; they share Typer's first panel ("Options") with --help."""
    return [
        ("config", Optional[str], typer.Option(None, "--config", "-c", metavar="<file>", help="TOML or YAML file with this stage's keys (or a \\[stage] table).")),
        ("set_", Optional[List[str]], typer.Option(None, "--set", metavar="<key=value>", help="Override one key: --set key=value (repeatable).")),
        ("print_config", bool, typer.Option(False, "--print-config", help="Print the resolved config as TOML and exit.")),
        ("resume", bool, typer.Option(False, "--resume", help="Continue an interrupted run of the same config.")),
        ("overwrite", bool, typer.Option(False, "--overwrite", help="Replace an existing artifact (kept until the new one is complete).")),
    ]


def _check_unique(params: list[inspect.Parameter], cls: type) -> None:
    """Two parameters with one option name would silently shadow each other in click: refuse at import time."""
    seen: dict[str, str] = {"-h": "help", "--help": "help"}
    for p in params:
        for decl in p.default.param_decls or ():
            for name in decl.split("/"):
                if name in seen:
                    raise TypeError(f"{cls.__name__}: option {name} is claimed by both {seen[name]} and {p.name}; rename one")
                seen[name] = p.name


def signature(cls: type, *, short: Mapping[str, str] | None = None, aliases: Mapping[str, Sequence[str]] | None = None,
              extras: Sequence[Extra] = ()) -> tuple[inspect.Signature, list[_Option]]:
    """The command signature for config class `cls` (see the module docstring) and the generated key options."""
    opts = _options(cls, short or {}, aliases or {})
    clash = sorted({o.param for o in opts} & ({e.name for e in extras} | set(_TAIL)))
    if clash:
        raise TypeError(f"{cls.__name__}: key(s) {', '.join(clash)} clash with a command's own option; rename the key")
    rank = _panel_rank([o.key.panel or DEFAULT_PANEL for o in opts] + [e.panel for e in extras])
    rows: list[tuple[int, int, inspect.Parameter]] = []
    kw = inspect.Parameter.KEYWORD_ONLY
    for i, o in enumerate(opts):
        panel = o.key.panel or DEFAULT_PANEL
        hidden = o.param != o.key.name
        shown = _default_text(o.key)
        # The default goes into the help text: the option's own default is None ("not given"), and Typer would
        # print a custom show_default string as "[default: (x)]" on a line of its own.
        text = _escape(o.key.help) + (f" (default: {shown})" if shown is not None else "")
        option = typer.Option(None, *o.decls, help=text, hidden=hidden, metavar=_metavar(o.key), show_default=False,
                              rich_help_panel=panel_title(panel))
        rows.append((rank[panel], i, inspect.Parameter(o.param, kw, default=option, annotation=o.annotation)))
    for j, e in enumerate(extras):
        option = typer.Option(None, *e.decls, help=_escape(e.help), metavar=e.metavar, rich_help_panel=panel_title(e.panel))
        rows.append((rank[e.panel], len(opts) + j, inspect.Parameter(e.name, kw, default=option, annotation=e.annotation)))
    params = [p for _, _, p in sorted(rows, key=lambda r: r[:2])]
    params += [inspect.Parameter(name, kw, default=default, annotation=ann) for name, ann, default in _tail()]
    _check_unique(params, cls)
    return inspect.Signature(params), opts


def _given(opts: list[_Option], values: dict[str, Any]) -> dict[str, Any]:
    """config key -> the value given under its name or an old spelling; both at once is an error (order is lost)."""
    from distillkit.errors import ConfigError

    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for o in opts:
        v = values.get(o.param)
        if v is None or (o.is_tuple and not v):
            continue
        name = o.decls[0].split("/")[0]
        if o.key.name in out:
            raise ConfigError(f"{spelled[o.key.name]} and {name} set the same key {o.key.name}: use {o.key.option} only")
        out[o.key.name] = ",".join(v) if o.is_tuple else v
        spelled[o.key.name] = name
    return out


def stage_command(cls: type, section: str, *, short: Mapping[str, str] | None = None,
                  aliases: Mapping[str, Sequence[str]] | None = None,
                  extras: Sequence[Extra] = ()) -> Callable[[Callable[[StageArgs], None]], Callable[..., None]]:
    """Decorate `body(args: StageArgs)` into a Typer command whose options are `cls`'s keys.

    `short`: extra short names (``{"out": "-o"}``); `aliases`: hidden old spellings kept working
    (``{"gen_seeds": ["--seeds"]}``); `extras`: options that are not config keys. Errors raised by the
    body (and by alias merging) go through `handled` (one line, exit 2 for bad input).
    """
    sig, opts = signature(cls, short=short, aliases=aliases, extras=extras)
    extra_names = [e.name for e in extras]

    def decorate(body: Callable[[StageArgs], None]) -> Callable[..., None]:
        def command(**values: Any) -> None:
            with handled():
                args = StageArgs(cls=cls, section=section, options=_given(opts, values), config=values["config"],
                                 sets=values["set_"], print_config=values["print_config"], resume=values["resume"],
                                 overwrite=values["overwrite"], extras={n: values[n] for n in extra_names})
                body(args)

        command.__signature__ = sig  # type: ignore[attr-defined]  # what Typer reads (inspect.signature)
        command.__name__ = body.__name__
        command.__qualname__ = body.__qualname__
        command.__doc__ = body.__doc__
        command.__module__ = body.__module__
        return command

    return decorate


__all__ = ["Extra", "StageArgs", "stage_command", "signature", "panel_title", "PANEL_ORDER"]
