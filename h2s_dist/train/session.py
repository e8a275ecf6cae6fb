"""Where a training loop reports metrics and checkpoints: in this process, or in Ray Train.

`LocalSession` runs the loop in the calling process (world size 1) and writes
checkpoints itself; `RayTrainSession` hands them to `ray.train.report`, which uploads
them to the run's storage and restores the latest one after a worker failure. The loop
sees the same methods either way.

Both keep the latest `keep` checkpoints (Ray Train through CheckpointConfig(num_to_keep))
plus, with a `BestRule`, the best one by a metric in `<output>/checkpoints/best/`. The state
is serialised in the step (a snapshot of tensors that change at the next one). The local
session then writes it from a background thread (`BackgroundWriter`) without blocking the
step; under Ray Train, rank 0 hands Ray a local temporary folder that Ray uploads within the
report (SYNC, so that step waits for the upload: see RayTrainSession). `wait()` returns once
every write has landed; `fit` calls it at the end, also when a step fails, so a resume finds
what was reported.
"""

from __future__ import annotations

import json
import logging
import pathlib
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from h2s_dist.data import storage
from h2s_dist.train import checkpoint as ckpt

CHECKPOINT_FILE = "state.pt"
BEST_FOLDER = "best"
BEST_RECORD = "best.json"
log = logging.getLogger(__name__)


class TrainSession(Protocol):
    def restore(self) -> dict[str, Any] | None:
        """The latest checkpoint's state, or None on a fresh start."""

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None, step: int) -> None:
        """Called by every rank equally often; `state` is given by the writing rank only."""

    def latest_checkpoint_uri(self) -> str | None:
        """Where the newest checkpoint lives (for the stage's outputs)."""

    def best_checkpoint_uri(self) -> str | None:
        """Where the best checkpoint by `loop.best_checkpoint_metric` lives (None: not kept)."""

    def wait(self) -> None:
        """Return once every checkpoint reported so far is in storage (re-raises a failed write)."""


def _checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


class BackgroundWriter:
    """One write at a time, off the training thread. `submit` first waits for the previous write
    (so at most one serialised checkpoint waits in memory and writes land in order); `wait`
    joins the last one and raises what it raised."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as error:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = error

        self._thread = threading.Thread(target=run, name="h2s-checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"a checkpoint write failed: {error}") from error


@dataclass(frozen=True)
class BestRule:
    """Which checkpoint is the best: the one with the lowest (`min`) or highest `metric`."""

    metric: str
    mode: str = "min"

    def better(self, value: float, than: float | None) -> bool:
        return than is None or (value < than if self.mode == "min" else value > than)


class BestKeeper:
    """The best checkpoint so far, by a `BestRule`, as `<folder>/state.pt` beside `best.json`
    ({step, metric, value}), which a resumed run reads back so the best is not forgotten."""

    def __init__(self, folder: str | None, rule: BestRule | None):
        self.folder = folder
        self.rule = rule if folder else None
        self._value: float | None = None
        self._warned = False
        if self.rule is not None and storage.exists(storage.join(folder, BEST_RECORD)):
            self._value = json.loads(storage.read_bytes(storage.join(folder, BEST_RECORD)))["value"]

    @property
    def uri(self) -> str | None:
        if self.rule is None:
            return None
        found = storage.join(self.folder, CHECKPOINT_FILE)
        return found if storage.exists(found) else None

    def improves(self, metrics: Mapping[str, float]) -> float | None:
        """The metric's value when these metrics beat the best so far (remembered as the new
        best), else None."""
        if self.rule is None:
            return None
        value = metrics.get(self.rule.metric)
        if value is None:
            if not self._warned:
                log.warning("best_checkpoint_metric %r is not among the logged metrics %s; no best checkpoint kept",
                            self.rule.metric, sorted(metrics))
                self._warned = True
            return None
        if not self.rule.better(float(value), self._value):
            return None
        self._value = float(value)
        return self._value

    def write(self, data: bytes, step: int, value: float) -> None:
        """Called from the writer thread: the state first, then the record naming it."""
        storage.write_bytes(storage.join(self.folder, CHECKPOINT_FILE), data)
        record = {"step": step, "metric": self.rule.metric, "value": value}
        storage.write_bytes(storage.join(self.folder, BEST_RECORD), json.dumps(record).encode())


class LocalSession:
    """World size 1, in this process: checkpoints go to `checkpoint_uri/step_N/state.pt`, the
    best (with `best`) to `checkpoint_uri/best/state.pt`.

    Each file is written atomically (storage.write_bytes) by a background thread, so a crash
    mid-write leaves the previous checkpoint as the latest.
    """

    def __init__(self, checkpoint_uri: str, spec_hash: str, keep_last: int = 2, best: BestRule | None = None):
        self.checkpoint_uri = checkpoint_uri
        self.spec_hash = spec_hash
        self.keep_last = keep_last
        self.best = BestKeeper(storage.join(checkpoint_uri, BEST_FOLDER), best)
        self._writer = BackgroundWriter()

    def _all(self) -> list[str]:
        return sorted(
            uri for uri in storage.list_uris(self.checkpoint_uri, suffix=CHECKPOINT_FILE) if "/step_" in uri
        )

    def latest_checkpoint_uri(self) -> str | None:
        self.wait()  # a checkpoint reported is the latest once it is written
        found = self._all()
        return found[-1] if found else None

    def restore(self) -> dict[str, Any] | None:
        latest = self.latest_checkpoint_uri()
        if latest is None:
            return None
        return ckpt.from_bytes(storage.read_bytes(latest), expected_spec_hash=self.spec_hash, where=latest)

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None, step: int) -> None:
        if state is None:
            return
        data, best_value = ckpt.to_bytes(state), self.best.improves(metrics)
        uri = storage.join(self.checkpoint_uri, _checkpoint_name(step), CHECKPOINT_FILE)

        def write() -> None:
            storage.write_bytes(uri, data)
            if best_value is not None:
                self.best.write(data, step, best_value)
            for old in self._all()[: -self.keep_last]:
                storage.delete(old, prune_empty_folder=True)  # no empty step_N folders piling up

        self._writer.submit(write)

    def wait(self) -> None:
        self._writer.wait()

    def best_checkpoint_uri(self) -> str | None:
        self.wait()
        return self.best.uri


class RayTrainSession:
    """Inside a Ray Train worker: checkpoints through `ray.train.report`.

    Every rank calls `report` equally often (Ray's report is a barrier); only rank 0 hands a
    checkpoint (the others None), so only rank 0 uploads model state. The state is written to
    a local temporary folder that Ray uploads within the report (CheckpointUploadMode.SYNC;
    ASYNC left a two-node run that lost a node unable to resume). Ray keeps the newest
    `num_to_keep` (built into the trainer's CheckpointConfig by train.launch); the best is
    copied by rank 0 to `best_folder` by this session's own writer.

    report_log_steps: also report metrics at every log step (`report_metrics`), not only with
    checkpoints: a Tune trial's TuneReportCallback passes each report on to Tune, so ASHA sees
    every log step. Off in plain runs, where nobody reads them and each report is a barrier.
    """

    def __init__(self, spec_hash: str, checkpoint_root: str | None = None, *, report_log_steps: bool = False,
                 best: BestRule | None = None, best_folder: str | None = None):
        self.spec_hash = spec_hash
        self.checkpoint_root = checkpoint_root  # where Ray persists this run's checkpoints
        self.report_log_steps = report_log_steps
        self.best = BestKeeper(best_folder, best)
        self._writer = BackgroundWriter()
        self._latest: str | None = None

    def restore(self) -> dict[str, Any] | None:
        import ray.train

        found = ray.train.get_checkpoint()
        if found is None:
            return None
        with found.as_directory() as folder:
            path = pathlib.Path(folder) / CHECKPOINT_FILE
            self._latest = found.path
            return ckpt.from_bytes(path.read_bytes(), expected_spec_hash=self.spec_hash, where=str(found.path))

    def report_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Called by the loop at log steps (on every rank): a metrics-only report when asked."""
        if self.report_log_steps:
            self._report(metrics, None, step)

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None, step: int) -> None:
        data = None if state is None else ckpt.to_bytes(state)
        self._report(metrics, data, step)
        best_value = None if data is None else self.best.improves(metrics)
        if best_value is not None:
            self._writer.submit(lambda: self.best.write(data, step, best_value))
        if data is not None and self.checkpoint_root:
            self._latest = storage.join(self.checkpoint_root, _checkpoint_name(step), CHECKPOINT_FILE)

    def _report(self, metrics: Mapping[str, float], data: bytes | None, step: int) -> None:
        import ray.train
        from ray.train import CheckpointUploadMode

        clean = {k: float(v) for k, v in metrics.items()}
        clean["step"] = step
        checkpoint = None
        if data is not None:
            folder = tempfile.mkdtemp(prefix="h2s-ckpt-")  # deleted by Ray once uploaded (below)
            (pathlib.Path(folder) / CHECKPOINT_FILE).write_bytes(data)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        # SYNC: with ASYNC uploads a run that lost a node mid-run did not come back
        # (test_cluster's two-node resume hung after the restart); ASYNC waits for that to be
        # understood. Rank 0's upload of a local temporary folder is one file copy here.
        # Ray deletes an uploaded folder only in ASYNC mode unless told: left to its default, every
        # checkpoint stayed in the node's temporary folder (~0.5 GB each for the paper's MotionNet).
        ray.train.report(clean, checkpoint=checkpoint, checkpoint_dir_name=_checkpoint_name(step),
                         checkpoint_upload_mode=CheckpointUploadMode.SYNC, delete_local_checkpoint_after_upload=True)

    def wait(self) -> None:
        # Ray's own uploads are awaited by Ray when the training function returns.
        self._writer.wait()

    def latest_checkpoint_uri(self) -> str | None:
        return self._latest

    def best_checkpoint_uri(self) -> str | None:
        self.wait()
        return self.best.uri
