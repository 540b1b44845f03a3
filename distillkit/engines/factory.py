"""Choosing and building an engine: the one place that knows every implementation."""

from __future__ import annotations

from distillkit.engines.base import Engine, EngineName
from distillkit.models import DType, bf16_supported


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
    """Build an engine. `model` (an already loaded transformers model) is used by `hf` if given.

    Each implementation is imported only when it is chosen: vllm is an optional dependency.
    """
    if name == "auto":
        name = "vllm" if vllm_usable() else "hf"
    if name == "vllm":
        from distillkit.engines.vllm import VllmEngine

        # bf16 only where the hardware runs it natively: on an AVX2-only CPU it is ~5x slower than fp32.
        resolved = ("bfloat16" if bf16_supported("cuda" if vllm_usable() else "cpu") else "float32") if dtype == "auto" else dtype
        return VllmEngine(model_dir, dtype=resolved, max_model_len=max_length, max_top_k=max_top_k)
    from distillkit.engines.hf import HFEngine

    return HFEngine(model_dir, dtype=dtype, batch_tokens=batch_tokens, model=model, vocab_size=vocab_size)


__all__ = ["vllm_usable", "make_engine"]
