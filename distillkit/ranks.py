"""Which process of a (torchrun) launch this is, read from the environment: no torch import.

Rank 0 owns the output and prints; every other rank stays quiet. Code that holds a
`distillkit.training.distributed.DistInfo` asks it (``dist.is_main``); code above the training
loop (the CLI, the recipe runner), which has none, asks here. Both read the same RANK variable
torchrun sets, so they agree; outside torchrun there is one process and it is the main one.
"""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """True on rank 0, and in a process that torchrun did not launch (no RANK)."""
    return os.environ.get("RANK", "0") == "0"


__all__ = ["is_main_process"]
