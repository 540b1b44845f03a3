"""distillkit: measure-before-you-train knowledge distillation for causal LMs.

The library is usable without the CLI; heavy dependencies (torch, transformers,
vllm, lm_eval) are imported lazily inside the functions that need them.
"""

__version__ = "0.1.0"
