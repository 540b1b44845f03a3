"""Inference engines behind one Protocol (`base.Engine`): `hf` and `vllm`, chosen by `factory.make_engine`."""

from distillkit.engines.base import Engine, SequenceScores
from distillkit.engines.factory import make_engine

__all__ = ["Engine", "SequenceScores", "make_engine"]
