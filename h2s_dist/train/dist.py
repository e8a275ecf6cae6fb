"""Process-group helpers: the only place that branches on world size.

Every collective here does nothing (or the obvious single-process thing) when no process
group is initialised, so the training loop reads the same at one process and at N Ray
Train workers (STYLE habit 5).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """True on the one rank that writes (logs, checkpoints, artifacts)."""
    return rank() == 0


def pick_device(use_gpu: bool) -> torch.device:
    """The device for this rank: its local GPU when asked and present, else the CPU."""
    if use_gpu and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if use_gpu:
        raise ValueError("scaling.use_gpu is true but torch sees no CUDA device; set use_gpu: false for CPU")
    return torch.device("cpu")


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel when there is a process group, the model itself otherwise."""
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    # find_unused_parameters: a frozen MotionNet (mode a) or an unused decoder level
    # would otherwise make DDP wait forever for their gradients.
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (identity without a process group)."""
    if not is_distributed() or not values:
        return dict(values)
    names = sorted(values)
    packed = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=device)
    torch_dist.all_reduce(packed)
    packed /= world_size()
    return dict(zip(names, packed.tolist()))


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, in place; the tensor itself without a process group."""
    if is_distributed():
        torch_dist.all_reduce(tensor)
    return tensor


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order ([obj] without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out
