"""Inference engines behind one Protocol (see `base.Engine`): `hf` and `vllm`."""

from distillkit.engines.base import Engine, SequenceScores, make_engine

__all__ = ["Engine", "SequenceScores", "make_engine"]
