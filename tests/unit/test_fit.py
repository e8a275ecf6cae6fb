"""Properties of the training loop `h2s_dist.train.loop.fit` on a toy regression task, on CPU.

The toy task draws sample j of a global stream from a generator seeded by j, so any run,
split into any micro-batches or ranks, sees exactly the samples its position names. The
model is float64 so that reordered sums agree to ~1e-15 and tolerances can stay tight.

    PYTHONPATH=. python -m pytest tests/unit/test_fit.py
"""

from __future__ import annotations

import multiprocessing
import pathlib
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as torch_mp

from h2s_dist.tracking import NullTracker
from h2s_dist.train.loop import FitResult, fit, split_bias_groups
from h2s_dist.train.session import LocalSession
from h2s_dist.specs.common import LoopSpec, OptimSpec

DIM_IN, DIM_HIDDEN, DIM_OUT = 4, 8, 3
SPEC_HASH = "toy-spec"
CPU = torch.device("cpu")
# Float64 sums of a handful of products regrouped differently differ by a few ulps.
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def sample(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `index` of the global stream: a fixed (x, y) pair seeded by its index."""
    g = torch.Generator().manual_seed(10_000 + index)
    x = torch.randn(DIM_IN, generator=g, dtype=torch.float64)
    y = torch.randn(DIM_OUT, generator=g, dtype=torch.float64)
    return x, y


class Interrupted(Exception):
    """Raised by the toy stream to stand in for a worker dying mid-run."""


class ToyTask:
    """A two-layer regression whose batch stream is a pure function of the data position.

    Rank r of W with batch B takes, in its k-th batch, global samples
    [k*W*B + r*B, k*W*B + (r+1)*B): the ranks' k-th batches together are the k-th batch
    of W*B that a single process would read.
    """

    def __init__(self, batch_size: int, dropout: float = 0.0, fail_at_sample: int | None = None):
        self.size = batch_size
        self.dropout = dropout
        self.fail_at_sample = fail_at_sample  # local position whose batch raises Interrupted
        self.positions: list[int] = []  # local positions of the batches handed out

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(DIM_IN, DIM_HIDDEN),
            torch.nn.Dropout(self.dropout),
            torch.nn.Tanh(),
            torch.nn.Linear(DIM_HIDDEN, DIM_OUT),
        ).double()

    def param_groups(self, model: torch.nn.Module, optim: OptimSpec) -> list[dict[str, Any]]:
        return split_bias_groups(model.named_parameters(), optim.lr, optim.bias_lr_multiplier, "toy")

    def batches(self, rank: int, world_size: int, position: int | None, seed: int) -> ToyStream:
        return ToyStream(self, rank, world_size, position or 0)

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = (t.to(device) for t in batch)
        # A mean over the batch: k micro-batch means averaged by fit are the mean of the whole.
        total = torch.nn.functional.mse_loss(model(x), y)
        return total, {"loss/mse": total.detach()}

    def batch_size(self, batch: Any) -> int:
        return len(batch[0])

    def pictures(self, model: torch.nn.Module, batch: Any, device: torch.device) -> dict:
        return {}

    def final_weights(self, model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        return {"toy": {k: v.detach().clone() for k, v in model.state_dict().items()}}


class ToyStream:
    """The toy task's data stream (fit's `DataStream`): its position is the number of samples
    this rank has read, and the batch at a position is a pure function of it."""

    def __init__(self, task: ToyTask, rank: int, world_size: int, position: int):
        assert position % task.size == 0, "the toy stream only restarts on batch boundaries"
        self.task, self.rank, self.world_size, self.position = task, rank, world_size, position
        self.skipped: list = []  # the toy stream never skips a sample

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        task, position = self.task, self.position
        if position == task.fail_at_sample:
            raise Interrupted(f"interrupted before the batch at sample {position}")
        block = position // task.size
        first = block * self.world_size * task.size + self.rank * task.size
        xs, ys = zip(*(sample(first + i) for i in range(task.size)))
        task.positions.append(position)
        self.position += task.size
        return torch.stack(xs), torch.stack(ys)

    def checkpoint(self) -> int:
        return self.position


def run_fit(task: ToyTask, loop: LoopSpec, optim: OptimSpec, folder: pathlib.Path) -> FitResult:
    return fit(task, loop, optim, LocalSession(str(folder), SPEC_HASH), NullTracker(), CPU, SPEC_HASH)


def loop_spec(**overrides: Any) -> LoopSpec:
    # Pictures and logs off the hot path; a checkpoint is still written at the last step.
    base = {"max_steps": 4, "log_every_steps": 1, "picture_every_steps": 1000, "checkpoint_every_steps": 1000}
    return LoopSpec(**{**base, **overrides})


# --- Gradient accumulation ------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_k_micro_batches_of_b_over_k_give_the_same_update_as_one_batch_of_b(tmp_path, optimizer):
    # No momentum or weight decay in SGD: the update is then lr * gradient, so any error in
    # how fit scales accumulated gradients shows up as a scaled step.
    optim = OptimSpec(name=optimizer, lr=0.1, momentum=0.0, weight_decay=0.0)
    batch, k = 8, 4
    whole = run_fit(ToyTask(batch), loop_spec(grad_accum_steps=1), optim, tmp_path / "whole")
    split = run_fit(ToyTask(batch // k), loop_spec(grad_accum_steps=k), optim, tmp_path / "split")

    torch.testing.assert_close(split.weights["toy"], whole.weights["toy"], **TIGHT)
    # The loss terms fit reports are the step's mean, not one micro-batch's.
    assert split.metrics["loss/mse"] == pytest.approx(whole.metrics["loss/mse"], rel=1e-12)
    # The data position counts samples, so both runs stop at the same point of the stream.
    assert split.samples_seen == whole.samples_seen == 4 * batch
    # And the update really moved the weights (a zero learning rate would also "match").
    fresh = ToyTask(batch).final_weights(_seeded_model(ToyTask(batch)))
    assert not torch.allclose(whole.weights["toy"]["0.weight"], fresh["toy"]["0.weight"])


def _seeded_model(task: ToyTask) -> torch.nn.Module:
    """The model fit starts from at seed 0 on rank 0."""
    torch.manual_seed(0)
    return task.build_model()


# --- Resume ---------------------------------------------------------------------


def test_a_run_interrupted_at_step_k_and_resumed_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # Adam's moments, a learning rate decayed at step 1 and again at step 5, dropout drawing
    # from the torch RNG and two micro-batches per step: the resume must restore optimiser,
    # scheduler, RNG and data position to match. (A scheduler restarted at the resume would
    # count from 0 and decay at step 3 + 1 = 4 instead of 5; milestones k apart would hide that.)
    optim = OptimSpec(name="adam", lr=0.05, weight_decay=0.0, milestones=[1, 5], gamma=0.5)
    batch, accum, k = 4, 2, 3
    loop = loop_spec(max_steps=6, grad_accum_steps=accum, checkpoint_every_steps=k)

    straight = run_fit(ToyTask(batch, dropout=0.3), loop, optim, tmp_path / "straight")

    folder = tmp_path / "interrupted"
    doomed = ToyTask(batch, dropout=0.3, fail_at_sample=k * accum * batch)
    with pytest.raises(Interrupted):
        run_fit(doomed, loop, optim, folder)
    resumed_task = ToyTask(batch, dropout=0.3)
    resumed = run_fit(resumed_task, loop, optim, folder)

    assert resumed.resumed_from_step == k
    # The resumed stream picks up at the first sample the checkpointed run had not used.
    assert resumed_task.positions[0] == k * accum * batch
    assert resumed.step == straight.step == 6
    assert resumed.samples_seen == straight.samples_seen
    # The same float64 operations in the same order: bit-for-bit equal, not merely close.
    torch.testing.assert_close(resumed.weights["toy"], straight.weights["toy"], rtol=0, atol=0)


# --- The stream's end -----------------------------------------------------------


class ClosingToyStream(ToyStream):
    """A ToyStream that records `close()` (streams with readers: DataLoader processes, Ray Data)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class ClosingToyTask(ToyTask):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams: list[ClosingToyStream] = []

    def batches(self, rank: int, world_size: int, position: int | None, seed: int) -> ClosingToyStream:
        self.streams.append(ClosingToyStream(self, rank, world_size, position or 0))
        return self.streams[-1]


def test_fit_closes_its_stream_once_when_it_ends_and_when_a_step_fails(tmp_path):
    optim = OptimSpec(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    done = ClosingToyTask(4)
    run_fit(done, loop_spec(), optim, tmp_path / "done")
    failed = ClosingToyTask(4, fail_at_sample=8)
    with pytest.raises(Interrupted):
        run_fit(failed, loop_spec(), optim, tmp_path / "failed")
    assert [s.closed for s in done.streams] == [s.closed for s in failed.streams] == [1]


def test_fit_closes_its_stream_when_the_last_checkpoint_write_fails(tmp_path):
    class FailingWrites(LocalSession):
        reported = False

        def report(self, *args: Any) -> None:
            super().report(*args)
            self.reported = True

        def wait(self) -> None:
            super().wait()
            if self.reported:  # the checkpoint write of the last step failed
                raise OSError("disk full")

    task = ClosingToyTask(4)
    optim = OptimSpec(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    with pytest.raises(OSError, match="disk full"):
        fit(task, loop_spec(), optim, FailingWrites(str(tmp_path), SPEC_HASH), NullTracker(), CPU, SPEC_HASH)
    assert [s.closed for s in task.streams] == [1]


# --- Data parallel --------------------------------------------------------------


def _gloo_worker(rank: int, world_size: int, folder: str, batch: int, loop: dict, optim: dict) -> None:
    torch.set_num_threads(1)  # two processes on a shared 2-core machine
    init = f"file://{folder}/rendezvous"
    torch_dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        result = run_fit(ToyTask(batch), LoopSpec(**loop), OptimSpec(**optim), pathlib.Path(folder) / "ckpt")
        if rank == 0:
            torch.save({"weights": result.weights, "checksums": result.first_batch_checksums},
                       f"{folder}/rank0.pt")
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
@pytest.mark.timeout(120)  # a rank that dies before the rendezvous would leave the other waiting
def test_two_gloo_processes_with_batch_b_each_match_one_process_with_2b(tmp_path):
    # Two micro-batches per step so DDP's no_sync on the first one is covered too: the
    # ranks must still average the full step's gradients once.
    optim = OptimSpec(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    loop = loop_spec(max_steps=3, grad_accum_steps=2)
    batch = 4
    single = run_fit(ToyTask(2 * batch), loop, optim, tmp_path / "single")

    ddp_folder = tmp_path / "ddp"
    ddp_folder.mkdir()
    # Forked, not spawned: a spawned child re-imports torch and, at its first optimiser,
    # torch._dynamo, which takes tens of seconds on a 2-core machine; a forked one
    # inherits them from this process, which has just run fit. Each child keeps to one
    # thread, so no OpenMP pool is needed after the fork.
    torch_mp.start_processes(
        _gloo_worker,
        args=(2, str(ddp_folder), batch, loop.model_dump(), optim.model_dump()),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    ddp = torch.load(ddp_folder / "rank0.pt", weights_only=False)

    torch.testing.assert_close(ddp["weights"]["toy"], single.weights["toy"], **TIGHT)
    # Each rank read its own half of the global batch, not the same one twice.
    first, second = ddp["checksums"]
    assert first != second
