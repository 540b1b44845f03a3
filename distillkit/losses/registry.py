"""The divergences, by name: one registration each, readable without torch.

A `Registered` divergence is its name, the keyword parameters its function takes (each with its default, its
range and the train option that feeds it) and the name of that function in `distillkit/losses/divergences.py`,
which binds the names to the functions when the losses are first used. Everything that needs only the names and
parameters comes from here, so `distillkit --help` stays torch-free: train's `--loss` choices (`Divergence`) and
their help (`choices_help`), the parameters a train config hands the loss (`config_params`), the checks of
those options (`option_problems`) and of a call's parameters (`resolve_params`).

A new divergence is one function in divergences.py, ``NAME_rows(log_q, log_p, **params) -> [n]`` (fp32 log-probs
over one support, without T²), and one entry in `REGISTRY`; a parameter that no divergence had before also needs
its TrainConfig option (the key `Param.option` names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a divergence."""

    name: str  # the keyword its function takes
    default: float | None  # None: required, given per step (TAID's t, from its schedule)
    option: str | None = None  # the TrainConfig key that feeds it; None: no option, the caller passes it per step
    needs: str = ""  # what to pass, for the message when a required parameter is missing
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class Registered:
    """One divergence: its name (train's --loss value), its parameters and its function's name."""

    name: str
    rows: str  # the function in distillkit/losses/divergences.py: (log_q, log_p, **params) -> [n]
    params: tuple[Param, ...] = ()


_SKEW = Param("alpha", 0.1, "skew_alpha")

REGISTRY: tuple[Registered, ...] = (
    Registered("fkl", "fkl_rows"),
    Registered("rkl", "rkl_rows"),
    Registered("jsd", "jsd_rows", (Param("beta", 0.5, "jsd_beta"),)),
    Registered("skl", "skl_rows", (_SKEW,)),
    Registered("srkl", "srkl_rows", (_SKEW,)),
    Registered("tvd", "tvd_rows"),
    Registered("akl", "akl_rows", (Param("mu", 0.5, "akl_mu"),)),
    Registered("taid", "taid_rows", (Param("t", None, needs="the interpolation t in [0, 1], e.g. TaidSchedule.t"),)),
    Registered("jeffreys", "jeffreys_rows"),
)

DIVERGENCES: tuple[str, ...] = tuple(d.name for d in REGISTRY)
# The choice type of train's --loss and of the loss functions' `kind`, made from the names above.
Divergence = Literal[DIVERGENCES]  # type: ignore[valid-type]

_BY_NAME = {d.name: d for d in REGISTRY}


def registered(kind: str) -> Registered:
    """The registration of `kind`. Raises ValueError naming what exists."""
    if kind not in _BY_NAME:
        raise ValueError(f"unknown divergence kind={kind!r}; choose one of {', '.join(DIVERGENCES)}")
    return _BY_NAME[kind]


def resolve_params(kind: str, params: dict[str, object]) -> dict[str, float]:
    """Check `kind` and its keyword parameters; fill defaults. Raises ValueError naming what exists."""
    allowed = registered(kind).params
    unknown = sorted(set(params) - {p.name for p in allowed})
    if unknown:
        accepts = ", ".join(p.name for p in allowed) if allowed else "no parameters"
        raise ValueError(f"divergence {kind!r} got unknown parameter(s) {unknown}; it accepts {accepts}")
    out: dict[str, float] = {}
    for p in allowed:
        value = params.get(p.name, p.default)
        if value is None:
            raise ValueError(f"divergence {kind!r} needs {p.name}= ({p.needs})")
        value = float(value)  # accepts 0-dim tensors, e.g. a schedule's t
        if not p.low <= value <= p.high:
            raise ValueError(f"divergence {kind!r}: {p.name}={value} is outside [{p.low:g}, {p.high:g}]")
        out[p.name] = value
    return out


def _options() -> dict[str, Param]:
    """Option name -> the parameter it feeds, in registry order (an option that feeds several appears once)."""
    return {p.option: p for d in REGISTRY for p in d.params if p.option is not None}


def config_params(kind: str, cfg: Any) -> dict[str, float]:
    """The parameters of `kind` that a train config sets (its options by `Param.option`); per-step ones stay out."""
    return {p.name: getattr(cfg, p.option) for p in registered(kind).params if p.option is not None}


def option_problems(cfg: Any) -> list[str]:
    """Every divergence option of a train config outside its parameter's range (checked whatever the loss)."""
    return [f"{name} must be in [{p.low:g}, {p.high:g}], got {getattr(cfg, name)}"
            for name, p in _options().items() if not p.low <= getattr(cfg, name) <= p.high]


def choices_help() -> str:
    """The divergences for --loss's help, each with the options that feed it; neighbours fed alike share them
    ("skl / srkl (skew_alpha)")."""
    groups: list[tuple[list[str], tuple[str, ...]]] = []
    for d in REGISTRY:
        fed = tuple(p.option for p in d.params if p.option is not None)
        if fed and groups and groups[-1][1] == fed:
            groups[-1][0].append(d.name)
        else:
            groups.append(([d.name], fed))
    return ", ".join(" / ".join(names) + (f" ({', '.join(fed)})" if fed else "") for names, fed in groups)


__all__ = ["DIVERGENCES", "Divergence", "Param", "REGISTRY", "Registered", "choices_help", "config_params",
           "option_problems", "registered", "resolve_params"]
