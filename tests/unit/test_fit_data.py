"""What `fit` does with its data stream, on a toy stream on CPU: the position the stream
checkpoints is what a resumed fit hands back to `Task.batches`, and what the stream skipped
is logged as `data/skipped` and listed in `skipped.json`, across a resume.

    PYTHONPATH=. python -m pytest tests/unit/test_fit_data.py
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from h2s_dist.data.skips import Skip
from h2s_dist.specs.common import LoopSpec, OptimSpec
from h2s_dist.tracking import NullTracker
from h2s_dist.train.loop import SKIPPED_ARTIFACT, fit
from h2s_dist.train.session import LocalSession

BATCH = 2
SPEC_HASH = "toy"


class Crash(RuntimeError):
    pass


class ToyStream:
    """Batch k is (x = k, y = 0) of BATCH rows; every `skip_every`-th batch position also
    records one skipped sample. The position is the next batch index."""

    def __init__(self, position: int, skip_every: int):
        self.position, self.skip_every = position, skip_every
        self.skipped: list[Skip] = []
        self.checkpoints: list[int] = []

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.position
        self.position += 1
        if k % self.skip_every == 0:
            self.skipped.append(Skip(f"video{k}", "shard-000000.tar", "ClipDecodeError: toy"))
        return torch.full((BATCH, 1), float(k)), torch.zeros(BATCH, 1)

    def checkpoint(self) -> dict[str, int]:
        self.checkpoints.append(self.position)
        return {"next_batch": self.position}


class ToyTask:
    def __init__(self, skip_every: int = 3, crash_at_batch: int | None = None):
        self.skip_every, self.crash_at_batch = skip_every, crash_at_batch
        self.resumed_from: list[Any] = []
        self.stream: ToyStream | None = None

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(1, 1)

    def param_groups(self, model, optim) -> list[dict[str, Any]]:
        return [{"params": list(model.parameters())}]

    def batches(self, rank: int, world_size: int, position: Any, seed: int) -> ToyStream:
        self.resumed_from.append(position)
        self.stream = ToyStream(0 if position is None else position["next_batch"], self.skip_every)
        return self.stream

    def loss(self, model, batch, device):
        x, y = batch
        if self.crash_at_batch is not None and int(x[0, 0]) == self.crash_at_batch:
            raise Crash("simulated crash")
        total = torch.nn.functional.mse_loss(model(x), y)
        return total, {"loss/mse": total.item()}

    def batch_size(self, batch) -> int:
        return len(batch[0])

    def pictures(self, model, batch, device) -> dict:
        return {}

    def final_weights(self, model) -> dict:
        return {}


class RecordingTracker(NullTracker):
    def __init__(self):
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.dicts: list[tuple[str, dict]] = []

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_dict(self, data, artifact_file):
        self.dicts.append((artifact_file, data))


def _fit(task: ToyTask, tracker: RecordingTracker, folder, max_steps: int = 6):
    loop = LoopSpec(max_steps=max_steps, log_every_steps=2, picture_every_steps=1000, checkpoint_every_steps=3)
    optim = OptimSpec(name="sgd", lr=0.01)
    return fit(task, loop, optim, LocalSession(str(folder), SPEC_HASH), tracker, torch.device("cpu"), SPEC_HASH)


def test_skips_are_counted_at_log_steps_and_listed_at_checkpoints(tmp_path):
    task, tracker = ToyTask(skip_every=3), RecordingTracker()
    result = _fit(task, tracker, tmp_path)
    # Batches 0..5; those at 0 and 3 each skipped a sample.
    counts = {step: (m["data/skipped"], m["data/samples_seen"]) for step, m in tracker.metrics}
    assert counts == {2: (1.0, 4.0), 4: (2.0, 8.0), 6: (2.0, 12.0)}
    assert [name for name, _ in tracker.dicts] == [SKIPPED_ARTIFACT] * 2  # checkpoints at steps 3 and 6
    final = tracker.dicts[-1][1]
    assert final["num_skipped"] == 2 and [s["key"] for s in final["skipped"]] == ["video0", "video3"]
    assert result.samples_seen == 12 and task.stream.checkpoints == [3, 6]


def test_resumed_fit_hands_the_checkpointed_position_back_and_keeps_earlier_skips(tmp_path):
    with pytest.raises(Crash):
        _fit(ToyTask(skip_every=2, crash_at_batch=4), RecordingTracker(), tmp_path)
    task, tracker = ToyTask(skip_every=2), RecordingTracker()
    result = _fit(task, tracker, tmp_path)
    assert result.resumed_from_step == 3 and task.resumed_from == [{"next_batch": 3}]
    # Skipped before the checkpoint (batches 0, 2) and after the resume (batch 4) are all listed.
    final = tracker.dicts[-1][1]
    assert [s["key"] for s in final["skipped"]] == ["video0", "video2", "video4"]
    assert dict(tracker.metrics)[6]["data/skipped"] == 3.0 and result.samples_seen == 12


def test_a_finished_run_resumed_again_still_lists_its_skips(tmp_path):
    _fit(ToyTask(skip_every=2), RecordingTracker(), tmp_path)
    task, tracker = ToyTask(skip_every=2), RecordingTracker()
    assert _fit(task, tracker, tmp_path).step == 6
    assert tracker.dicts == [(SKIPPED_ARTIFACT, {"num_skipped": 3, "skipped": [
        {"key": f"video{k}", "source": "shard-000000.tar", "reason": "ClipDecodeError: toy"} for k in (0, 2, 4)]})]


class ValidatingTask(ToyTask):
    """A ToyTask that validates every 4 steps (val/score = the step it was computed at)."""

    validate_every_steps = 4

    def __init__(self):
        super().__init__(skip_every=1000)
        self.steps_seen = 0
        self.validated_at: list[int] = []

    def loss(self, model, batch, device):
        self.steps_seen += 1
        return super().loss(model, batch, device)

    def validate(self, model, device):
        self.validated_at.append(self.steps_seen)
        return {"val/score": float(self.steps_seen)}


def test_validation_runs_at_the_first_log_step_every_k_steps_and_at_the_end_and_rides_every_log(tmp_path):
    task, tracker = ValidatingTask(), RecordingTracker()
    _fit(task, tracker, tmp_path, max_steps=9)
    # Log steps 2, 4, 6, 8, 9: validated at 2 (first), 6 (2 + 4) and 9 (last).
    assert task.validated_at == [2, 6, 9]
    assert [(step, m["val/score"]) for step, m in tracker.metrics] == [(2, 2.0), (4, 2.0), (6, 6.0), (8, 6.0), (9, 9.0)]
