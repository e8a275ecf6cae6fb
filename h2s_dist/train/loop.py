"""The training loop every stage runs, the same at world size 1 and N.

A stage supplies a `Task`: its model, its parameter groups, its data stream, the loss of
one batch and the pictures worth logging. `fit` does the rest, top to bottom: restore,
accumulate, step, log, picture, checkpoint. Ranks differ only in what they are handed:
rank 0 a real tracker and a progress bar (h2s_dist.progress), the others a `NullTracker`
and a `NullProgress`; the rank-0 checkpoint state.

The data position is the stream's own (`DataStream.checkpoint()`): `fit` saves every
rank's in the checkpoint and hands it back to `Task.batches` on resume, without looking
inside. What the streams skipped is logged as `data/skipped` (all ranks, so far) at log
steps and listed in the `skipped.json` artifact at every checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from h2s_dist import progress
from h2s_dist.data.skips import Skip
from h2s_dist.specs.common import LoopSpec, OptimSpec
from h2s_dist.train import checkpoint as ckpt
from h2s_dist.train import dist, schedule

SKIPPED_ARTIFACT = "skipped.json"


class DataStream(Protocol):
    """What `Task.batches` returns: endless batches that know where they stand."""

    skipped: Sequence[Skip]
    """Every sample this stream has skipped so far (empty for a stream that never skips)."""

    def __next__(self) -> Any: ...

    def checkpoint(self) -> Any:
        """A picklable position after the batches handed out so far, for `Task.batches` to
        resume from; from now on the stream yields what a stream resumed there yields."""

    # Optional: close() -> None, called by `fit` when it is done with the stream (also after a
    # failed step), so its readers (DataLoader processes, a Ray Data execution) stop there
    # rather than whenever the object is collected, possibly after Ray has shut down.


class Task(Protocol):
    """What a stage plugs into `fit`."""

    def build_model(self) -> torch.nn.Module: ...

    def param_groups(self, model: torch.nn.Module, optim: OptimSpec) -> list[dict[str, Any]]:
        """Parameter groups with their own `lr` where the stage needs them."""

    def batches(self, rank: int, world_size: int, position: Any | None, seed: int) -> DataStream:
        """This rank's endless batch stream, from `position` (one its `checkpoint()` gave) or,
        when None, from the start."""

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """(total loss, {term name: value}) of one micro-batch; names like `loss/pixel`. Values are
        detached 0-dim tensors left on the device (a `float()` here would make the host wait for
        the GPU at every micro-step; `fit` reads them once, at log steps), or plain floats."""

    def batch_size(self, batch: Any) -> int: ...

    def pictures(self, model: torch.nn.Module, batch: Any, device: torch.device) -> dict[str, np.ndarray]:
        """{artifact name: (H, W, 3) uint8} pictures of this batch; called on rank 0 only."""

    def validate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Optional: {metric name: value} on held-out data (e.g. `val/epe`); called on rank 0
        every `validate_every_steps` (an optional attribute too), at the first log step and at the end."""

    def final_weights(self, model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """{name: state dict} of the weights this stage hands on (e.g. `motionnet`)."""

    has_unused_parameters: bool
    """Optional, default False: True when some parameter that requires grad may get no gradient
    in a step (a head the loss skips). DDP then searches the graph for them every step
    (find_unused_parameters), which costs a traversal and delays the all-reduce. Frozen
    parameters (requires_grad False, the MotionNet of fine-tuning mode a) need no such flag:
    DDP leaves them out of its buckets."""


@dataclass
class FitResult:
    step: int
    samples_seen: int
    """Samples this rank trained on (every rank's count is the same)."""
    metrics: dict[str, float]
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    resumed_from_step: int | None = None
    first_batch_checksums: list[float] = field(default_factory=list)
    """Sum of the first batch's input tensor on every rank: equal values would mean the
    ranks were fed the same clips (a forgotten rank split)."""


def build_optimizer(groups: list[dict[str, Any]], optim: OptimSpec) -> torch.optim.Optimizer:
    if optim.name == "adam":
        return torch.optim.Adam(groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def split_bias_groups(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, bias_mult: float, tag: str) -> list[dict]:
    """Two parameter groups, weights at `lr` and biases at `lr * bias_mult` (the release's lr_mult 2)."""
    weights, biases = [], []
    for name, param in named:
        if param.requires_grad:
            (biases if name.endswith("bias") else weights).append(param)
    groups = [{"params": weights, "lr": lr, "name": f"{tag}.weight"}]
    if biases:
        groups.append({"params": biases, "lr": lr * bias_mult, "name": f"{tag}.bias"})
    return [g for g in groups if g["params"]]


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def fit(task: Task, loop: LoopSpec, optim: OptimSpec, session: Any, tracker: Any, device: torch.device, spec_hash: str,
        batch_size: int | None = None) -> FitResult:
    """Train `task` for `loop.max_steps` optimiser steps, resuming from the session's checkpoint.

    batch_size: clips per micro-batch on each rank; with `optim.reference_batch_size` it sets
    the global batch the learning rates are scaled to (h2s_dist.train.schedule)."""
    torch.manual_seed(loop.seed + dist.rank())
    model = task.build_model().to(device)
    if loop.channels_last:
        model = model.to(memory_format=torch.channels_last)
    global_batch = batch_size * loop.grad_accum_steps * dist.world_size() if batch_size else None
    optimizer = build_optimizer(schedule.scale_groups(task.param_groups(model, optim), optim, global_batch), optim)
    scheduler = schedule.build_scheduler(optimizer, optim)

    step, samples_seen, resumed_from, position = 0, 0, None, None
    earlier_skips: list[Skip] = []  # every rank's skips before the resumed checkpoint, held by rank 0
    metrics: dict[str, float] = {}
    state = session.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.restore_scheduler(scheduler, state["scheduler"])
        # Per-rank data position and RNG; a resume on fewer ranks takes the nearest rank's.
        mine = min(dist.rank(), len(state["data"]) - 1)
        step, samples_seen, position = state["step"], state["samples_seen"], state["data"][mine]
        if dist.is_main():
            earlier_skips = [Skip.from_dict(s) for s in state["skipped"]]
        metrics = dict(state.get("metrics", {}))
        ckpt.set_rng_state(state["rng"][mine], device)
        resumed_from = step
        tracker.set_tags({"h2s.resumed_from_step": str(step)})

    validation: dict[str, float] = {}
    validated_at: int | None = None
    trained = dist.wrap_ddp(model, device, find_unused_parameters=getattr(task, "has_unused_parameters", False),
                            bf16_grads=loop.bf16_grad_allreduce)
    if loop.compile:
        trained = torch.compile(trained)  # around DDP: Dynamo splits the graph at DDP's buckets
    stream = task.batches(dist.rank(), dist.world_size(), position, loop.seed)
    window_start, window_samples = time.perf_counter(), 0
    bar = progress.build("train", loop.max_steps, initial=step, rate_unit="samples", enabled=dist.is_main())
    checksums: list[float] = []
    try:
        while step < loop.max_steps:
            trained.train()
            terms_sum: dict[str, torch.Tensor] = {}  # on the device until a log step reads them
            for micro in range(loop.grad_accum_steps):
                batch = next(stream)
                if not checksums:
                    checksums = [float(c) for c in dist.gather_objects(_checksum(batch))]
                # Only the last micro-batch synchronises gradients across ranks.
                sync = micro == loop.grad_accum_steps - 1 or not dist.is_distributed()
                with (contextlib.nullcontext() if sync else trained.no_sync()), _autocast(device, loop.bf16):
                    total, terms = task.loss(trained, batch, device)
                (total / loop.grad_accum_steps).backward()
                for name, value in terms.items():
                    terms_sum[name] = terms_sum.get(name, 0.0) + _on_device(value, device) / loop.grad_accum_steps
                window_samples += task.batch_size(batch)
                samples_seen += task.batch_size(batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1

            is_last = step == loop.max_steps
            checkpoint_due = step % loop.checkpoint_every_steps == 0 or is_last
            if step % loop.log_every_steps == 0 or is_last:
                metrics = dist.mean_across_ranks(terms_sum, device)  # the one host read of the terms
                elapsed = time.perf_counter() - window_start
                metrics["throughput/samples_per_s"] = window_samples * dist.world_size() / max(elapsed, 1e-9)
                for group in optimizer.param_groups:
                    metrics[f"lr/{group.get('name', 'group')}"] = group["lr"]
                metrics.update(_data_counts(samples_seen, len(earlier_skips) + len(stream.skipped), device))
                if dist.is_main() and _validation_due(task, step, is_last, validated_at):
                    validation, validated_at = task.validate(dist.unwrap(trained), device), step
                metrics.update(validation)  # the latest with every log step: a Tune search may rank by it
                tracker.log_metrics(metrics, step=step)
                # Sessions that want every logged step (a Tune trial's, for early stopping) say so; at
                # a checkpoint step the checkpoint's report carries these metrics (one result per step).
                report_metrics = getattr(session, "report_metrics", None)
                if report_metrics is not None and not checkpoint_due:
                    report_metrics(metrics, step)
                window_start, window_samples = time.perf_counter(), 0
            # The loss shown is the last logged one: reading this step's would wait for the GPU.
            bar.update(step, samples=samples_seen * dist.world_size(), loss=progress.headline_loss(metrics))
            if dist.is_main() and (step % loop.picture_every_steps == 0 or is_last):
                trained.eval()
                with torch.no_grad():
                    for name, image in task.pictures(dist.unwrap(trained), batch, device).items():
                        tracker.log_image(image, f"{name}/step_{step:07d}.png")
            if checkpoint_due:
                skipped = earlier_skips + _gather_skips(stream.skipped)
                tracker.log_dict(_skipped_report(skipped), SKIPPED_ARTIFACT)
                state = _resume_state(model, optimizer, scheduler, step, samples_seen, stream.checkpoint(), skipped,
                                      spec_hash, metrics, device)
                session.report(metrics, state, step)
    finally:
        try:
            session.wait()  # checkpoint writes in flight (also when a step failed: a resume reads them)
        finally:  # also when a write failed: the stream's readers end here, not after Ray is gone
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    bar.close()
    if step == resumed_from:  # nothing left to train: the list is the checkpoint's
        tracker.log_dict(_skipped_report(earlier_skips), SKIPPED_ARTIFACT)

    weights = task.final_weights(model) if dist.is_main() else {}
    return FitResult(step, samples_seen, metrics, weights, resumed_from, checksums)


def _validation_due(task: Task, step: int, is_last: bool, validated_at: int | None) -> bool:
    """A task that validates does so at the first log step, every `validate_every_steps` after
    it (checked at log steps) and at the last step."""
    if getattr(task, "validate", None) is None:
        return False
    every = getattr(task, "validate_every_steps", None)
    return validated_at is None or is_last or (every is not None and step - validated_at >= every)


def _on_device(value: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """A loss term as a detached float64 tensor on `device`, without a host sync."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _checksum(batch: Any) -> float:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return float(inputs.double().sum())


def _data_counts(samples_seen: int, num_skipped: int, device: torch.device) -> dict[str, float]:
    """Samples trained on and samples skipped so far, summed over ranks."""
    counts = dist.sum_across_ranks(torch.tensor([samples_seen, num_skipped], dtype=torch.float64, device=device))
    return {"data/samples_seen": counts[0].item(), "data/skipped": counts[1].item()}


def _gather_skips(mine: Sequence[Skip]) -> list[Skip]:
    """Every rank's skips, in rank order (a collective: every rank calls it)."""
    return [s for skips in dist.gather_objects(list(mine)) for s in skips]


def _skipped_report(skipped: Sequence[Skip]) -> dict[str, Any]:
    return {"num_skipped": len(skipped), "skipped": [s.to_dict() for s in skipped]}


def _resume_state(
    model, optimizer, scheduler, step: int, samples_seen: int, position: Any, skipped: Sequence[Skip],
    spec_hash: str, metrics: Mapping[str, float], device: torch.device,
) -> Mapping[str, Any] | None:
    """Rank 0's checkpoint, holding every rank's data position and RNG (gathered) and every
    sample skipped so far."""
    positions = dist.gather_objects(position)
    rngs = dist.gather_objects(ckpt.rng_state(device))
    if not dist.is_main():
        return None
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "samples_seen": samples_seen,
        "data": positions,
        "skipped": [s.to_dict() for s in skipped],
        "rng": rngs,
        "spec_hash": spec_hash,
        "metrics": dict(metrics),
    }
