"""The Engine protocol that `score` and `eval` use to talk to a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Sequence

if TYPE_CHECKING:
    import numpy as np

EngineName = Literal["auto", "hf", "vllm"]
DType = Literal["auto", "float32", "bfloat16"]


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


def vllm_usable() -> bool:
    """vllm imports and a CUDA GPU is present (what `--engine auto` needs to pick vllm)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch means no GPU engine
        return False


def make_engine(
    name: EngineName,
    model_dir: str,
    dtype: DType = "auto",
    max_length: int = 2048,
    batch_tokens: int = 8192,
    max_top_k: int = 64,
    model=None,
    vocab_size: int | None = None,
) -> Engine:
    """Build an engine. `model` (an already loaded transformers model) is used by `hf` if given."""
    if name == "auto":
        name = "vllm" if vllm_usable() else "hf"
    if name == "vllm":
        from distillkit.engines.vllm import VllmEngine

        from distillkit.models import bf16_supported

        # bf16 only where the hardware runs it natively: on an AVX2-only CPU it is ~5x slower than fp32.
        resolved = ("bfloat16" if bf16_supported("cuda" if vllm_usable() else "cpu") else "float32") if dtype == "auto" else dtype
        return VllmEngine(model_dir, dtype=resolved, max_model_len=max_length, max_top_k=max_top_k)
    from distillkit.engines.hf import HFEngine

    return HFEngine(model_dir, dtype=dtype, batch_tokens=batch_tokens, model=model, vocab_size=vocab_size)
