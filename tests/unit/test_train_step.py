"""The training step's GPU-minded options, checked on CPU: loss terms read from the device
only at log steps, learning-rate scaling and warmup, DDP without the unused-parameter
search (every trained parameter gets a gradient), bf16 gradient compression on gloo,
cuDNN's autotuner on CUDA.

    PYTHONPATH=. python -m pytest tests/unit/test_train_step.py -q
"""

from __future__ import annotations

import multiprocessing
import pathlib
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as torch_mp

from h2s_dist.models import FinetuneMode
from h2s_dist.specs.common import LoopSpec, MotionNetSpec, OptimSpec
from h2s_dist.specs.training import FinetuneSpec, PretrainSpec
from h2s_dist.tracking import NullTracker
from h2s_dist.train import dist, schedule
from h2s_dist.train.builders import unsup_loss_config
from h2s_dist.train.loop import fit
from h2s_dist.train.session import LocalSession
from tests.unit.test_fit import SPEC_HASH, ToyStream, ToyTask, loop_spec, run_fit

CPU = torch.device("cpu")
HOST_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "numpy"}


# --- Loss terms stay on the device --------------------------------------------------


class CountingTensor(torch.Tensor):
    """A tensor that notes every read of its values by the host (item, float, tolist, ...).
    Arithmetic on it returns CountingTensors, so the note follows the sums fit keeps."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            cls.reads.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


class EventStream(ToyStream):
    def __init__(self, events: list, *args):
        super().__init__(*args)
        self.events = events

    def __next__(self):
        self.events.append("batch")
        return super().__next__()


class CountingTask(ToyTask):
    """The toy task whose loss terms note when the host reads them, in one event list with the
    batches drawn."""

    def __init__(self, batch_size: int):
        super().__init__(batch_size)
        self.events: list[str] = []

    def batches(self, rank, world_size, position, seed):
        return EventStream(self.events, self, rank, world_size, position or 0)

    def loss(self, model, batch, device):
        total, terms = super().loss(model, batch, device)
        return total, {name: value.as_subclass(CountingTensor) for name, value in terms.items()}


def test_loss_terms_are_read_by_the_host_only_at_log_steps(tmp_path, monkeypatch):
    task, accum = CountingTask(2), 2
    monkeypatch.setattr(CountingTensor, "reads", _Recorder(task.events))
    loop = loop_spec(max_steps=6, log_every_steps=3, grad_accum_steps=accum)
    run_fit(task, loop, OptimSpec(lr=0.1), tmp_path)

    steps_with_reads, batches = set(), 0
    for event in task.events:
        if event == "batch":
            batches += 1
        else:
            steps_with_reads.add((batches - 1) // accum + 1)  # the step whose batch came last
    # One read of all terms per log step (steps 3 and 6), none in the other four steps.
    assert steps_with_reads == {3, 6}
    assert task.events.count("read") == 2


class _Recorder(list):
    """CountingTensor.reads that writes into the task's event list."""

    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def append(self, name: str) -> None:
        self.events.append("read")


# --- Learning-rate scaling and warmup ---------------------------------------------------


def test_lr_factor_ramps_linearly_over_warmup_then_decays_at_milestones():
    optim = OptimSpec(lr=1.0, warmup_steps=4, milestones=[6, 8], gamma=0.5)
    factors = [schedule.lr_factor(optim, step) for step in range(10)]
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert schedule.lr_factor(OptimSpec(lr=1.0), 0) == 1.0  # no warmup: the rate from step 0


def test_rates_scale_with_the_global_batch_over_the_reference_keeping_group_ratios(tmp_path):
    # batch 4 x 2 accumulated on 1 rank = global 8; the lr was written for 2: x4.
    optim = OptimSpec(lr=0.01, bias_lr_multiplier=2.0, reference_batch_size=2, momentum=0.0, weight_decay=0.0)
    session = LocalSession(str(tmp_path), SPEC_HASH)
    result = fit(ToyTask(4), loop_spec(max_steps=2, grad_accum_steps=2), optim, session, NullTracker(), CPU,
                 SPEC_HASH, batch_size=4)
    assert result.metrics["lr/toy.weight"] == pytest.approx(0.04)
    assert result.metrics["lr/toy.bias"] == pytest.approx(0.08)
    with pytest.raises(ValueError, match="batch_size"):
        schedule.lr_scale(optim, None)


def test_a_resume_keeps_the_step_count_and_takes_this_runs_scale(tmp_path):
    # Written at global batch 4 (scale 2), resumed at global batch 8 (scale 4, as on twice the
    # workers): the warmup position comes from the checkpoint, the base rate from this run.
    optim = OptimSpec(lr=0.01, reference_batch_size=2, warmup_steps=4, momentum=0.0, weight_decay=0.0)
    first = fit(ToyTask(4), loop_spec(max_steps=2, checkpoint_every_steps=2), optim,
                LocalSession(str(tmp_path), SPEC_HASH), NullTracker(), CPU, SPEC_HASH, batch_size=4)
    assert first.metrics["lr/toy.weight"] == pytest.approx(0.02 * 3 / 4)  # step 2's rate, for step index 2
    resumed = fit(ToyTask(4), loop_spec(max_steps=3), optim, LocalSession(str(tmp_path), SPEC_HASH),
                  NullTracker(), CPU, SPEC_HASH, batch_size=8)
    assert resumed.resumed_from_step == 2
    assert resumed.metrics["lr/toy.weight"] == pytest.approx(0.04 * 1.0)  # step index 3: warmup done


# --- DDP: no unused-parameter search needed ----------------------------------------------


def _tiny_clips(batch: int = 2, frames: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(0))


def _missing_grads(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_every_trained_motionnet_parameter_gets_a_gradient_in_pretraining():
    from h2s_dist.train.stages.pretrain import PretrainTask

    spec = PretrainSpec.model_validate({"motionnet": {"flavour": "tiny"}, "validation": None,
                                        "data": {"dataset": "x", "crop_size": 32, "clip_len_frames": 3}})
    task = PretrainTask(spec)
    model = task.build_model()
    total, terms = task.loss(model, (_tiny_clips(),), CPU)
    total.backward()
    assert _missing_grads(model) == []
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in terms.values())


@pytest.mark.parametrize("mode", list(FinetuneMode))
def test_every_trained_stacked_parameter_gets_a_gradient_in_each_finetuning_mode(mode):
    from h2s_dist.train.stages.finetune import FinetuneTask

    spec = FinetuneSpec.model_validate({"mode": mode.value, "motionnet": {"flavour": "tiny"}, "vgg_flavour": "tiny",
                                        "data": {"dataset": "x", "crop_size": 32, "clip_len_frames": 3}})
    task = object.__new__(FinetuneTask)  # without reading a dataset's classes
    task.spec, task.num_classes, task.loss_config = spec, 3, unsup_loss_config(spec.loss, finetuning=True)
    model = task.build_model()
    total, _ = task.loss(model, (_tiny_clips(), torch.tensor([0, 2])), CPU)
    total.backward()
    # Mode (a)'s MotionNet is frozen (requires_grad False): DDP leaves it out of its buckets.
    assert _missing_grads(model) == []
    assert getattr(task, "has_unused_parameters", False) is False


def test_unwrap_sees_through_compile_and_ddp_wrappers():
    model = torch.nn.Linear(2, 2)
    assert dist.unwrap(torch.compile(model)) is model  # compiling is lazy: nothing runs here
    assert dist.unwrap(model) is model


# --- bf16 gradient compression on a gloo process group -----------------------------------


def _gloo_worker(rank: int, world_size: int, folder: str, batch: int, loop: dict, optim: dict) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    try:
        result = run_fit(ToyTask(batch), LoopSpec(**loop), OptimSpec(**optim), pathlib.Path(folder) / "ckpt")
        if rank == 0:
            torch.save(result.weights, f"{folder}/rank0.pt")
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
@pytest.mark.timeout(120)
def test_bf16_compressed_allreduce_trains_like_one_process_to_bf16_precision(tmp_path):
    optim = OptimSpec(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    loop = loop_spec(max_steps=3, bf16_grad_allreduce=True)
    single = run_fit(ToyTask(8), loop, optim, tmp_path / "single")
    folder = tmp_path / "ddp"
    folder.mkdir()
    torch_mp.start_processes(_gloo_worker, args=(2, str(folder), 4, loop.model_dump(), optim.model_dump()),
                             nprocs=2, join=True, start_method="fork")
    ddp = torch.load(folder / "rank0.pt", weights_only=False)["toy"]
    exact = single.weights["toy"]
    # The step is lr x the bf16-rounded mean gradient: close to fp32's to bf16's 8 bits ...
    torch.testing.assert_close(ddp, exact, rtol=0, atol=0.1 * 3 * 2 ** -8 * 4)
    # ... and not bit-equal to it, which would mean the hook never ran (float64 toy weights).
    assert any(not torch.equal(ddp[k], exact[k]) for k in exact)


# --- cuDNN autotuner --------------------------------------------------------------------------


def test_a_cuda_rank_turns_on_the_cudnn_autotuner(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.pick_device(use_gpu=True) == torch.device("cuda", 1)
    assert torch.backends.cudnn.benchmark is True
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    dist.pick_device(use_gpu=False)
    assert torch.backends.cudnn.benchmark is False
