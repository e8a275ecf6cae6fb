"""Learning rates over a run: linear scaling to the global batch, warmup, step decay.

    lr(step) = lr_spec x scale x warmup(step) x gamma ** (milestones passed by step)
    scale     = global batch / optim.reference_batch_size   (1 when no reference is given)
    warmup(s) = min(1, (s + 1) / optim.warmup_steps)        (1 when warmup_steps is 0)

The linear scaling rule (Goyal et al., 2017, "Accurate, Large Minibatch SGD"): k times the
batch takes k times the learning rate, with a warmup so the first steps, where the weights
change fastest, do not diverge at the large rate. Every parameter group is scaled alike, so
ratios such as MotionNet's 1e-6 against the VGG16's 1e-3 in fine-tuning are kept.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

import torch

from h2s_dist.specs.common import OptimSpec


def lr_scale(optim: OptimSpec, global_batch: int | None) -> float:
    """The linear-scaling factor of every learning rate: global batch / reference batch."""
    if optim.reference_batch_size is None:
        return 1.0
    if global_batch is None:
        raise ValueError("optim.reference_batch_size needs the global batch: pass fit(batch_size=...)")
    return global_batch / optim.reference_batch_size


def scale_groups(groups: list[dict[str, Any]], optim: OptimSpec, global_batch: int | None) -> list[dict[str, Any]]:
    """The groups with each `lr` multiplied by `lr_scale` (the groups' own rates otherwise as given)."""
    scale = lr_scale(optim, global_batch)
    return [{**group, "lr": group.get("lr", optim.lr) * scale} for group in groups]


def lr_factor(optim: OptimSpec, step: int) -> float:
    """warmup(step) x gamma ** (milestones <= step): the multiplier of the scaled rates at `step`
    (the step about to be taken, counted from 0)."""
    warmup = min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
    return warmup * optim.gamma ** bisect.bisect_right(sorted(optim.milestones), step)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that sets each group's rate to its scaled base rate x `lr_factor(step)`."""
    # A closure, not a callable object: LambdaLR's state_dict would pickle an object's fields
    # into checkpoints, and a resume must follow the spec, not the checkpoint's copy of it.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(optim, step))


def restore_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: Mapping[str, Any]) -> None:
    """Resume the step count of `state`, keeping this run's base rates: a resume on another
    number of workers (elastic training) has another global batch, hence another scale."""
    scheduler.last_epoch = state["last_epoch"]
    scheduler._step_count = state.get("_step_count", state["last_epoch"] + 1)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
