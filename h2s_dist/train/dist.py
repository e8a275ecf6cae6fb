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
        # Crops and clip lengths are fixed for a stage, so cuDNN's autotuner pays for itself
        # after the first steps (it picks the fastest convolution algorithm per shape).
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda", torch.cuda.current_device())
    if use_gpu:
        raise ValueError("scaling.use_gpu is true but torch sees no CUDA device; set use_gpu: false for CPU")
    return torch.device("cpu")


def wrap_ddp(model: torch.nn.Module, device: torch.device, *, find_unused_parameters: bool = False,
             bf16_grads: bool = False) -> torch.nn.Module:
    """DistributedDataParallel when there is a process group, the model itself otherwise.

    find_unused_parameters: only for a model where a parameter that requires grad may get no
    gradient in a step; it costs a graph traversal per step and holds back the all-reduce.
    Frozen parameters (requires_grad False) are not in DDP's buckets and need no search.
    bf16_grads: all-reduce gradients in bf16 (half the bytes on the wire; they are averaged in
    bf16, then written back to the fp32 gradients)."""
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    if bf16_grads:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

        hook = bf16_compress_hook
        if torch_dist.get_backend() == "gloo":
            # DDP refuses torch's hook by name unless NCCL >= 2.10 is there; gloo all-reduces
            # bf16 too, so CPU workers (and the CPU tests) run the same hook under another name.
            def gloo_bf16_compress_hook(state, bucket):
                return bf16_compress_hook(state, bucket)

            hook = gloo_bf16_compress_hook
        ddp.register_comm_hook(None, hook)  # state None: the default process group
    return ddp


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def mean_across_ranks(values: dict[str, torch.Tensor | float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics (0-dim tensors or floats) over ranks, as floats: one all-reduce and
    one read from the device (a host sync) for all of them."""
    if not values:
        return {}
    names = sorted(values)
    packed = torch.stack([
        values[n].detach().to(device=device, dtype=torch.float64).reshape(()) if isinstance(values[n], torch.Tensor)
        else torch.tensor(float(values[n]), dtype=torch.float64, device=device)
        for n in names
    ])
    if is_distributed():
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
