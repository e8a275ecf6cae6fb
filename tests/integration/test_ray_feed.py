"""The `ray_data` feed (DataSpec.feed): Ray Data decode tasks streaming clips to two Ray Train
workers through `get_dataset_shard`, and the same dataset read in this process
(`scaling.num_workers: 0`), crashed and resumed from its checkpoint.

Two tests on purpose: one Ray start-up for the module, one Ray Train fit (~30 s on 2 cores).
"""

from __future__ import annotations

import threading

import pytest
import torch

pytestmark = pytest.mark.integration


def _spec(dataset: str, **changes):
    from h2s_dist.specs.training import PretrainSpec

    base = dict(
        motionnet={"flavour": "tiny"},
        data={"dataset": dataset, "crop_size": 32, "batch_size": 4, "feed": "ray_data",
              "ray_data": {"shuffle_clips": 8}},
        optim={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        loop={"max_steps": 6, "log_every_steps": 2, "picture_every_steps": 100, "checkpoint_every_steps": 3},
    )
    return PretrainSpec(**{**base, **changes})


def test_two_workers_pretrain_on_distinct_clips_from_the_ray_data_feed(local_ray, make_synthetic_dataset, tmp_path,
                                                                       stage_run):
    from h2s_dist.train.launch import launch

    # Two workers of half a CPU each leave the 2-CPU local Ray one CPU for decode tasks.
    spec = _spec(make_synthetic_dataset(shard_target_bytes=200_000),
                 scaling={"num_workers": 2, "cpus_per_worker": 0.5})
    outputs = launch("pretrain_motionnet", spec, str(tmp_path / "pretrain"), stage_run("pretrain-ray-data"))

    assert outputs["steps"] == 6
    assert outputs["checkpoint"].endswith("step_000000006/state.pt")
    # Both ranks were fed, by Ray Train's split of one stream: different clips.
    first = outputs["first_batch_checksums"]
    assert len(first) == 2 and first[0] != first[1]
    state = torch.load(outputs["checkpoint"], weights_only=False)
    assert [p.batches for p in state["data"]] == [6, 6]  # every rank took a batch per step


class Crash(RuntimeError):
    pass


def test_in_process_feed_resumes_from_its_checkpoint_with_a_restarted_stream(local_ray, make_synthetic_dataset,
                                                                             tmp_path):
    from h2s_dist.data.ray_feed import BATCH_WORKER_THREAD, RayDataStream, RayFeedPosition
    from h2s_dist.tracking import NullTracker
    from h2s_dist.train.launch import build_local_session
    from h2s_dist.train.stages.pretrain import PretrainTask
    from h2s_dist.train.task import run_training

    spec = _spec(make_synthetic_dataset(shard_target_bytes=200_000))
    output = str(tmp_path / "pretrain")

    class CrashingTask(PretrainTask):
        calls = 0

        def loss(self, model, batch, device):
            CrashingTask.calls += 1
            if CrashingTask.calls == 5:  # after the checkpoint of step 3
                raise Crash("simulated crash")
            return super().loss(model, batch, device)

    def recording(task, streams: list):
        batches = task.batches
        task.batches = lambda *args: streams.append(batches(*args)) or streams[-1]
        return task

    with pytest.raises(Crash):  # fit closes the crashed run's stream (its Ray Data iteration)
        run_training(spec, CrashingTask(spec), build_local_session(spec, output), NullTracker(), output)

    streams: list = []
    outputs = run_training(spec, recording(PretrainTask(spec), streams), build_local_session(spec, output),
                           NullTracker(), output)

    assert outputs["resumed_from_step"] == 3 and outputs["steps"] == 6
    (stream,) = streams
    assert isinstance(stream, RayDataStream) and stream.epochs_started >= 1
    state = torch.load(outputs["checkpoint"], weights_only=False)
    assert state["data"] == [RayFeedPosition(batches=6)]  # the count runs on over the resume
    assert stream.last_keys and all(isinstance(k, str) for k in stream.last_keys)
    # fit closed the stream, and the close waited for Ray Data's batch workers: none is left to
    # touch Ray after the module's ray.shutdown() (that exits the whole test process).
    assert not [t for t in threading.enumerate() if t.name == BATCH_WORKER_THREAD]
