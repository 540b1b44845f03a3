"""torch.distributed for the train stage: ranks from torchrun's environment, DDP or FSDP2 wrapping,
full (rank-0) state dicts for checkpoints and the final save.

Launch: ``torchrun --nproc_per_node N --no-python distillkit train ...``. With WORLD_SIZE > 1 in the
environment, `init_from_env` starts a process group (NCCL on CUDA, gloo on CPU); without it, every
helper here is a no-op and training runs in one process. No home-made cluster code: multi-node runs
are torchrun's (``--nnodes``, ``--rdzv-endpoint``) or a scheduler's job launching torchrun.

Strategies:
- ``ddp``: every rank holds the whole student; gradients are averaged (all-reduce) in backward.
- ``fsdp2`` (``torch.distributed.fsdp.fully_shard``): each decoder layer and the root are sharded,
  so a rank holds 1/N of the parameters, gradients and optimizer state -- for students that do not
  fit one GPU. Checkpoints gather full state dicts on rank 0 (``torch.distributed.checkpoint``'s
  state-dict helpers), so they load into either strategy or a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

Strategy = Literal["ddp", "fsdp2"]


@dataclass(frozen=True, slots=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "auto") -> DistInfo:
    """Rank, world size and device from torchrun's environment; starts the process group if WORLD_SIZE > 1."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from distillkit.errors import ConfigError

        raise ConfigError("device = 'cuda' but no CUDA GPU is available (use device = 'auto' or 'cpu')")
    dev = f"cuda:{local}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if world <= 1:
        return DistInfo(device=dev)
    import torch.distributed as dist

    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    # CPU threads: torchrun sets OMP_NUM_THREADS=1 per process unless it is set; we leave it at that.
    return DistInfo(rank, world, local, dev, backend)


def shutdown(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def all_reduce_sum(tensor, info: DistInfo):
    """In-place sum over ranks (a no-op in one process)."""
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank (pickled)."""
    if not info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module, info: DistInfo, strategy: Strategy):
    """DDP- or FSDP2-wrap the training module (the student and its loss); unchanged in one process."""
    if not info.distributed:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # device_ids=None: the module is already on this rank's device and inputs stay where they are.
        return DDP(module, device_ids=None)
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(module.student):
        fully_shard(layer)
    fully_shard(module)  # root: embeddings, final norm and LM head, unsharded inside its forward
    return module


def unwrap(module):
    return getattr(module, "module", module)


def decoder_layers(student) -> list:
    layers = getattr(student.get_decoder(), "layers", None)
    if layers is None:
        from distillkit.errors import ModelError

        raise ModelError(f"FSDP2 needs a decoder with .layers (llama-style); {type(student).__name__} has none: use strategy = 'ddp'")
    return list(layers)


def model_state(module, info: DistInfo, strategy: Strategy) -> dict[str, Any]:
    """The training module's full state dict, on CPU, on rank 0 ({} elsewhere under FSDP2)."""
    if info.distributed and strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().clone() for k, v in unwrap(module).state_dict().items()}


def load_model_state(module, state: dict[str, Any], info: DistInfo, strategy: Strategy) -> None:
    if info.distributed and strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
        return
    unwrap(module).load_state_dict(state)


def optimizer_state(module, optimizer, info: DistInfo, strategy: Strategy) -> dict[str, Any]:
    if info.distributed and strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(module, optimizer, state: dict[str, Any], info: DistInfo, strategy: Strategy) -> None:
    if info.distributed and strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def grad_norm_value(norm) -> float:
    """clip_grad_norm_'s result as a float (a DTensor under FSDP2)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


__all__ = ["DistInfo", "Strategy", "init_from_env", "shutdown", "all_reduce_sum", "barrier", "broadcast_object", "wrap",
           "unwrap", "model_state", "load_model_state", "optimizer_state", "load_optimizer_state", "grad_norm_value"]
