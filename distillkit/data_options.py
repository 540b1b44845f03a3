"""The data options of score and eval, in a module that imports neither pyarrow nor numpy: the CLI builds its
options from these fields at start-up (`distillkit --help` stays fast); distillkit.data does the reading."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from distillkit.config import opt, pick

Format = Literal["text", "instruction"]


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """How to read records and split them: the data options of score and eval (one group of config keys).

    Nested into `ScoreConfig` and `EvalConfig` with `distillkit.config.group`, so its keys stay flat
    (``max_per_domain``, ``--max-per-domain``); train and eval re-read the score stage's values with
    `from_config`. Keyword-only so that `DataSpec` can put ``path`` first.
    """

    text_field: str = opt("text", "Column holding pretraining-style text.", panel="data")
    prompt_field: str = opt("prompt", "Column holding the instruction prompt.", panel="data")
    response_field: str = opt("response", "Column holding the reference response.", panel="data")
    domain_field: str | None = opt(None, "Column naming each record's domain (default: 'domain' if present, else file/folder names).",
                                   panel="data")
    id_field: str | None = opt(None, "Column with stable sample ids (default: 'id' if present, else a content hash).", panel="data")
    val_size: int = opt(500, "Held-out documents per domain (at most val_fraction of the domain); eval needs score's value to "
                             "measure on score's held-out slice.", panel="data")
    val_fraction: float = opt(0.1, "Largest fraction of a domain held out for validation.", panel="data")
    dev_size: int = opt(0, "Dev documents per domain, drawn after the held-out (test) slice from what would be training rows: "
                           "every decision made during a run (DDK re-weighting, the early check) reads dev, reports read the "
                           "held-out test slice (0: no dev split; DDK then reads the test slice, with a note).", panel="data",
                           identity="non-default")
    chat_template: Literal["auto", "off"] = opt("auto", "Prompt/response data: wrap each prompt in the tokenizer's chat template "
                                                "(a user turn + the assistant header) when it has one; the response ends "
                                                "with EOS either way. off: the prompt as the data gives it.", panel="data",
                                                identity=False)  # score/eval record whether a template was applied
    on_bad_rows: Literal["error", "skip"] = opt("error", "Records with an empty or null text (response, for prompt/response data): error = exit 2 naming them; skip = drop them, the count printed and recorded in the manifest. Repeated records are always dropped (counted the same way).", panel="data", identity="non-default")
    max_per_domain: int | None = opt(None, "Use at most this many documents per domain, before the held-out split "
                                           "(deterministic subsample).", panel="data")
    seed: int = opt(0, "Seed of the held-out split and the per-domain subsample (eval: also of lm-eval's sampling).", panel="data")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DataOptions:
        """The data options recorded in a stage's config dict (a score manifest's ``config``): exactly this
        group's keys; a key an older artifact lacks takes the default it was made with."""
        # Artifacts made before these keys existed had no dev split and no chat template.
        legacy = {"dev_size": 0, "chat_template": "off"}
        return pick(cls, {**{k: v for k, v in legacy.items() if k not in config}, **config})

    def spec(self, path: str) -> DataSpec:
        """What `load_data` reads: these options applied to the data at `path`."""
        return DataSpec(path=path, **{f.name: getattr(self, f.name) for f in fields(DataOptions)})

    def validate(self) -> list[str]:
        problems = [f"val_size must be >= 0, got {self.val_size}"] if self.val_size < 0 else []
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.dev_size < 0:
            problems.append(f"dev_size must be >= 0, got {self.dev_size}")
        if self.max_per_domain is not None and self.max_per_domain < 1:
            problems.append(f"max_per_domain must be >= 1 or unset, got {self.max_per_domain}")
        return problems


@dataclass(frozen=True)
class DataSpec(DataOptions):
    """What to read (`path`, resolved) and how (the inherited `DataOptions`): ``DataSpec(path, val_size=3)``."""

    path: str


__all__ = ["DataOptions", "DataSpec", "Format"]
