"""Run one stage: in this process (`scaling.num_workers: 0`) or on N Ray Train workers.

The launcher and `train/dist.py` are the only places that know whether Ray is involved.
Either way the stage's `run(spec, session, tracker, output_uri)` executes on every rank;
rank 0 writes `output_uri/outputs.json`, which the caller reads back.

    outputs = launch("pretrain_motionnet", spec, output_uri="s3://bucket/job/pretrain",
                     tracking=Tracking(uri, run_id))
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel

from h2s_dist.data import storage
from h2s_dist.train import checkpoint as ckpt
from h2s_dist.train import dist

# Stage kind -> module with `SPEC` (the pydantic model) and `run(spec, session, tracker, output_uri)`.
STAGE_MODULES = {
    "ingest": "h2s_dist.pipeline.ingest_stage",
    "pretrain_motionnet": "h2s_dist.train.stages.pretrain",
    "finetune_stacked": "h2s_dist.train.stages.finetune",
    "train_spatial": "h2s_dist.train.stages.spatial",
    "tvl1_flows": "h2s_dist.train.stages.tvl1_flows",
    "train_temporal_flows": "h2s_dist.train.stages.temporal_flows",
    "evaluate": "h2s_dist.train.stages.evaluate",
    "tune": "h2s_dist.train.stages.tune",
}
OUTPUTS_FILE = "outputs.json"


@dataclass(frozen=True)
class Tracking:
    """Where rank 0 logs: an MLflow tracking URI and the stage's run (created by the caller)."""

    uri: str | None = None
    run_id: str | None = None


def stage_module(kind: str):
    if kind not in STAGE_MODULES:
        raise ValueError(f"unknown stage kind {kind!r}; known: {', '.join(sorted(STAGE_MODULES))}")
    return importlib.import_module(STAGE_MODULES[kind])


def hash_of(spec: BaseModel) -> str:
    """The hash checkpoints are tied to: the spec without how it is scaled.

    Scaling (worker count, failures allowed) may change between a crash and its resume.
    """
    return ckpt.spec_hash(spec.model_dump(mode="json", exclude={"scaling"}))


def _make_tracker(tracking: Tracking):
    from h2s_dist.tracking import MlflowTracker, NullTracker

    if dist.is_main() and tracking.run_id:
        return MlflowTracker(tracking.uri, tracking.run_id)
    return NullTracker()


def _run_on_this_rank(kind: str, spec_data: dict, output_uri: str, tracking: Tracking, session: Any) -> None:
    module = stage_module(kind)
    spec = module.SPEC.model_validate(spec_data)
    tracker = _make_tracker(tracking)
    outputs = module.run(spec, session, tracker, output_uri)
    if dist.is_main():
        storage.write_bytes(storage.join(output_uri, OUTPUTS_FILE), json.dumps(outputs, indent=2).encode())


def train_worker(config: dict) -> None:
    """Entry point of every Ray Train worker (importable, so Ray can ship it by reference)."""
    from h2s_dist.train.session import RayTrainSession

    tracking = Tracking(**config["tracking"])
    session = RayTrainSession(config["spec_hash"], config.get("checkpoint_root"))
    _run_on_this_rank(config["kind"], config["spec"], config["output_uri"], tracking, session)


def ensure_ray(address: str | None = None) -> None:
    """Connect to `address` (or $RAY_ADDRESS), else start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True)


def launch(
    kind: str,
    spec: BaseModel,
    output_uri: str,
    tracking: Tracking = Tracking(),
    ray_address: str | None = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Run stage `kind` to completion (resuming from its checkpoints) and return its outputs."""
    spec_hash = hash_of(spec)
    spec_data = spec.model_dump(mode="json")
    scaling = spec.scaling
    if scaling.num_workers == 0:
        from h2s_dist.train.session import LocalSession

        session = LocalSession(storage.join(output_uri, "checkpoints"), spec_hash)
        _run_on_this_rank(kind, spec_data, output_uri, tracking, session)
    else:
        _fit_on_ray(kind, spec_data, spec_hash, scaling, output_uri, tracking, ray_address, run_name)
    return json.loads(storage.read_bytes(storage.join(output_uri, OUTPUTS_FILE)))


def _fit_on_ray(kind, spec_data, spec_hash, scaling, output_uri, tracking, ray_address, run_name) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray(ray_address)
    ray_root = storage.join(output_uri, "ray")
    ray_fs, ray_path = storage.pyarrow_filesystem(ray_root)
    # The run name is tied to the spec hash: rerunning the same spec resumes its
    # checkpoints (Ray restores a run by name), a changed spec starts a new run.
    name = run_name or f"{kind}-{spec_hash}"
    workers = (scaling.min_workers, scaling.num_workers) if scaling.min_workers else scaling.num_workers
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "kind": kind,
            "spec": spec_data,
            "spec_hash": spec_hash,
            "output_uri": output_uri,
            "tracking": asdict(tracking),
            "checkpoint_root": storage.join(ray_root, name),
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={
                "CPU": scaling.cpus_per_worker,
                **({"GPU": 1} if scaling.use_gpu else {}),
                **scaling.resources_per_worker,
            },
        ),
        run_config=RunConfig(
            name=name,
            storage_path=ray_path,
            storage_filesystem=ray_fs,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
        ),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
    )
    trainer.fit()
