"""Where a training loop reports metrics and checkpoints: in this process, or in Ray Train.

`LocalSession` runs the loop in the calling process (world size 1) and writes
checkpoints itself; `RayTrainSession` hands them to `ray.train.report`, which uploads
them to the run's storage and restores the latest one after a worker failure. The loop
sees the same three methods either way.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any, Protocol

from h2s_dist.data import storage
from h2s_dist.train import checkpoint as ckpt

CHECKPOINT_FILE = "state.pt"


class TrainSession(Protocol):
    def restore(self) -> dict[str, Any] | None:
        """The latest checkpoint's state, or None on a fresh start."""

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None, step: int) -> None:
        """Called by every rank equally often; `state` is given by the writing rank only."""

    def latest_checkpoint_uri(self) -> str | None:
        """Where the newest checkpoint lives (for the stage's outputs)."""


def _checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


class LocalSession:
    """World size 1, in this process: checkpoints go to `checkpoint_uri/step_N/state.pt`.

    Each file is written atomically (storage.write_bytes), so a crash mid-write leaves the
    previous checkpoint as the latest.
    """

    def __init__(self, checkpoint_uri: str, spec_hash: str, keep_last: int = 2):
        self.checkpoint_uri = checkpoint_uri
        self.spec_hash = spec_hash
        self.keep_last = keep_last

    def _all(self) -> list[str]:
        return sorted(
            uri for uri in storage.list_uris(self.checkpoint_uri, suffix=CHECKPOINT_FILE) if "/step_" in uri
        )

    def latest_checkpoint_uri(self) -> str | None:
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
        uri = storage.join(self.checkpoint_uri, _checkpoint_name(step), CHECKPOINT_FILE)
        storage.write_bytes(uri, ckpt.to_bytes(state))
        for old in self._all()[: -self.keep_last]:
            storage.delete(old, prune_empty_folder=True)  # no empty step_N folders piling up


class RayTrainSession:
    """Inside a Ray Train worker: checkpoints through `ray.train.report`."""

    def __init__(self, spec_hash: str, checkpoint_root: str | None = None):
        self.spec_hash = spec_hash
        self.checkpoint_root = checkpoint_root  # where Ray persists this run's checkpoints
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

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None, step: int) -> None:
        import ray.train

        clean = {k: float(v) for k, v in metrics.items()}
        clean["step"] = step
        if state is None:
            ray.train.report(clean, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="h2s-ckpt-") as folder:
            (pathlib.Path(folder) / CHECKPOINT_FILE).write_bytes(ckpt.to_bytes(state))
            ray.train.report(
                clean,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=_checkpoint_name(step),
            )
        if self.checkpoint_root:
            self._latest = storage.join(self.checkpoint_root, _checkpoint_name(step), CHECKPOINT_FILE)

    def latest_checkpoint_uri(self) -> str | None:
        return self._latest
