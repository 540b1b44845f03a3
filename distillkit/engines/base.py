"""The Engine protocol that `score` and `eval` use to talk to a model, and the scores it returns.

Only types live here: `hf` and `vllm` implement them and `factory.make_engine` picks one, so the
implementations import this module and nothing imports them back (no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Sequence

if TYPE_CHECKING:
    import numpy as np

EngineName = Literal["auto", "hf", "vllm"]


@dataclass(slots=True)
class SequenceScores:
    """Per-position scores of one token sequence of length L."""

    target_logprobs: "np.ndarray"  # float32 [L-1]: log p(ids[t] | ids[:t]) for t = 1..L-1
    topk_ids: "np.ndarray | None" = None  # int32 [L-1, k]: top-k ids of the distribution predicting ids[t]
    topk_logprobs: "np.ndarray | None" = None  # float32 [L-1, k], sorted descending


class Engine(Protocol):
    name: str

    def score(self, sequences: Sequence[Sequence[int]], top_k: int = 0) -> list[SequenceScores]:
        """Target-token log-probs (and optionally the top-k) at every position after the first."""
        ...

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation of each prompt: only the new tokens, stopping at EOS."""
        ...

    def close(self) -> None: ...


__all__ = ["EngineName", "SequenceScores", "Engine"]
