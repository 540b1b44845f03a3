"""`TrainState`: everything a run changes as it trains, saved and restored as one (``trainer.pt``).

The model and optimizer states go to their own checkpoint files (under FSDP2 they are gathered
collectively); everything else a resumed run needs to continue bitwise lives here: the step, the
sampler's position, the mixture's weights and history, TAID's t, the metrics and drawn batches so
far, the "before" held-out report, and the RNG streams.

`state_dict` / `load_state_dict` walk the dataclass fields, so a field added here is checkpointed
without further code: a `component()` (sampler, mixer, TAID, RNG: objects with their own
``state_dict``) is delegated to and restored in place, an `encoded()` one is converted, anything
else (plain Python values, tensors) is saved as it is; only a `transient()` field is left out. A
stateful object in an unmarked field is refused at the first save rather than lost on resume.
Everything saved is plain types and tensors, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from distillkit.errors import ArtifactError
from distillkit.training import checkpoint as ckpt

if TYPE_CHECKING:
    from distillkit.losses import TaidSchedule
    from distillkit.training.ddk import DomainMixer
    from distillkit.training.sampler import CurriculumSampler


def transient(default: Any = None) -> Any:
    """A field derived at run time and never checkpointed."""
    return field(default=default, metadata={"checkpoint": False})


def component(**kw: Any) -> Any:
    """A field holding a stateful object (``state_dict`` / ``load_state_dict``), restored in place."""
    return field(metadata={"component": True}, **kw)


def encoded(encode: Callable[[Any], Any], decode: Callable[[Any], Any], **kw: Any) -> Any:
    """A field saved as `encode(value)` and restored as `decode(saved)` (e.g. numpy -> tensor)."""
    return field(metadata={"encode": encode, "decode": decode}, **kw)


def _stack_rows(rows: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(rows)) if rows else None


def _unstack_rows(saved) -> list[np.ndarray]:
    return list(saved.numpy()) if saved is not None else []


class GlobalRNG:
    """The process's RNG streams (python, numpy, torch CPU and CUDA) as a checkpointable value."""

    def state_dict(self) -> dict[str, Any]:
        return ckpt.rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ckpt.set_rng_state(state)


@dataclass
class TrainState:
    """The mutable state of a run; `distillkit/pipelines/train.py` starts it fresh, `load_state_dict` resumes it."""

    sampler: CurriculumSampler = component()  # stage, position in every domain's stream, current domain weights
    mixer: DomainMixer = component()  # DDK weights and their history (-> mixture.arrow)
    taid: TaidSchedule | None = component(default=None)  # kind = "taid" only
    step: int = 0  # optimizer steps done
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one row per step (-> metrics.arrow)
    drawn: list[np.ndarray] = encoded(_stack_rows, _unstack_rows, default_factory=list)  # global batch of each step
    before: dict[str, Any] | None = None  # held-out report before training (-> heldout.arrow)
    rng: GlobalRNG = component(default_factory=GlobalRNG)  # last: restored after everything else
    resumed_from: int | None = transient()  # the step this process resumed at

    def state_dict(self) -> dict[str, Any]:
        out = {}
        for f in _saved_fields(self):
            value = getattr(self, f.name)
            if "encode" in f.metadata:
                out[f.name] = f.metadata["encode"](value)
            elif f.metadata.get("component"):
                out[f.name] = value.state_dict() if value is not None else None
            elif hasattr(value, "state_dict"):  # it would be pickled whole, and replaced by a dict on resume
                raise TypeError(f"TrainState.{f.name} holds a stateful object: declare it with component()")
            else:
                out[f.name] = value
        return out

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        saved = _upgrade(saved)
        missing = [f.name for f in _saved_fields(self) if f.name not in saved]
        if missing:
            raise ArtifactError(f"the checkpoint's trainer state lacks {missing}: it was written by another distillkit "
                                "version; resume with that version, or start over with --overwrite")
        for f in _saved_fields(self):
            value, current = saved[f.name], getattr(self, f.name)
            if "decode" in f.metadata:
                setattr(self, f.name, f.metadata["decode"](value))
            elif f.metadata.get("component"):
                if (current is None) != (value is None):
                    which = "has no" if value is None else "has"
                    raise ArtifactError(f"the checkpoint {which} {f.name} state, unlike this run: it belongs to a run "
                                        "with other settings; resume with those, or start over with --overwrite")
                if current is not None:
                    current.load_state_dict(value)  # in place: the component keeps its identity and its own checks
            else:
                setattr(self, f.name, value)

    def summary(self) -> dict[str, Any]:
        """The readable ``state.json`` next to a checkpoint."""
        return {"step": self.step, "stage": self.sampler.stage, "weights": [float(x) for x in self.sampler.weights],
                "last": self.metrics[-1] if self.metrics else None}


def _saved_fields(state: TrainState) -> list[Field]:
    return [f for f in fields(state) if f.metadata.get("checkpoint", True)]


def _upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """Trainer states written before TrainState kept the "before" report under "extra"."""
    if "before" not in saved and "extra" in saved:
        return {**saved, "before": dict(saved["extra"]).get("before")}
    return saved


__all__ = ["TrainState", "GlobalRNG", "component", "encoded", "transient"]
