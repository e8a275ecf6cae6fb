"""Run one stage: a driver stage in this process; a worker stage in this process
(`scaling.num_workers: 0`) or on N Ray Train workers.

The launcher and `train/dist.py` are the only places that know whether Ray is involved,
and `build_trainer` is the only place a Ray Train trainer is built (for a stage here, and
for a multi-worker Tune trial through `launch` too). A worker stage's
`run(spec, session, tracker, output_uri)` executes on every rank; a driver stage's
`run(spec, tracker, output_uri)` once. Rank 0 writes `output_uri/outputs.json`, which the
caller reads back.

    outputs = launch("pretrain_motionnet", spec, output_uri="s3://bucket/job/pretrain",
                     tracking=Tracking(uri, run_id))
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel

from h2s_dist.data import storage
from h2s_dist.registry import stage_kind
from h2s_dist.tasks import ensure_ray  # noqa: F401 (re-exported: tune, tests)
from h2s_dist.train import checkpoint as ckpt
from h2s_dist.train import dist

OUTPUTS_FILE = "outputs.json"


@dataclass(frozen=True)
class Tracking:
    """Where rank 0 logs: an MLflow tracking URI and the stage's run (created by the caller)."""

    uri: str | None = None
    run_id: str | None = None
    stage: str | None = None
    """The stage's name in the job: progress lines show it ($H2S_STAGE, h2s_dist.progress)."""


def _name_stage(tracking: Tracking) -> None:
    """Set $H2S_STAGE in this process (the driver, or a Ray Train worker) for progress lines, and
    $H2S_TRACKING_URI for weights in the model registry; env vars because they reach every bar
    (fit, evaluate, ingest) and every weights load without a new argument."""
    from h2s_dist.progress import STAGE_ENV

    if tracking.stage:
        os.environ[STAGE_ENV] = tracking.stage
    if tracking.uri:  # where weights.load_state_dict resolves `models:/NAME/VERSION` URIs
        from h2s_dist.weights import TRACKING_URI_ENV

        os.environ[TRACKING_URI_ENV] = tracking.uri


def hash_of(spec: BaseModel) -> str:
    """The hash checkpoints are tied to: the spec without how it is scaled.

    Scaling (worker count, failures allowed) and how many checkpoints are kept may change
    between a crash and its resume.
    """
    exclude: dict = {"scaling": True}
    if hasattr(spec, "loop"):
        exclude["loop"] = {"keep_checkpoints"}
    return ckpt.spec_hash(spec.model_dump(mode="json", exclude=exclude))


def _make_tracker(tracking: Tracking):
    from h2s_dist.tracking import MlflowTracker, NullTracker

    if dist.is_main() and tracking.run_id:
        return MlflowTracker(tracking.uri, tracking.run_id)
    return NullTracker()


def _write_outputs(output_uri: str, outputs: dict[str, Any]) -> None:
    if dist.is_main():
        storage.write_bytes(storage.join(output_uri, OUTPUTS_FILE), json.dumps(outputs, indent=2).encode())


def _run_on_this_rank(kind: str, spec_data: dict, output_uri: str, tracking: Tracking, session: Any) -> None:
    stage = stage_kind(kind)
    spec = stage.spec.model_validate(spec_data)
    _write_outputs(output_uri, stage.entry()(spec, session, _make_tracker(tracking), output_uri))


def checkpoint_policy(spec: BaseModel) -> tuple[int, Any]:
    """(checkpoints to keep, the best's BestRule or None) of a stage spec (`loop` fields)."""
    from h2s_dist.train.session import BestRule

    loop = getattr(spec, "loop", None)
    if loop is None:
        return 2, None
    best = BestRule(loop.best_checkpoint_metric, loop.best_checkpoint_mode) if loop.best_checkpoint_metric else None
    return loop.keep_checkpoints, best


def build_local_session(spec: BaseModel, output_uri: str, session_class: Any = None, **kwargs: Any):
    """The session of an in-process worker stage: checkpoints in `output_uri/checkpoints`,
    kept by the spec's policy. `session_class` (default LocalSession) and `kwargs`: a Tune trial's."""
    from h2s_dist.train.session import LocalSession

    keep, best = checkpoint_policy(spec)
    return (session_class or LocalSession)(storage.join(output_uri, "checkpoints"), hash_of(spec),
                                           keep_last=keep, best=best, **kwargs)


def train_worker(config: dict) -> None:
    """Entry point of every Ray Train worker (importable, so Ray can ship it by reference)."""
    from h2s_dist.train.session import RayTrainSession

    tracking = Tracking(**config["tracking"])
    _name_stage(tracking)
    spec = stage_kind(config["kind"]).spec.model_validate(config["spec"])
    _, best = checkpoint_policy(spec)
    session = RayTrainSession(config["spec_hash"], config.get("checkpoint_root"),
                              report_log_steps=config.get("report_log_steps", False), best=best,
                              best_folder=storage.join(config["output_uri"], "checkpoints", "best"))
    _run_on_this_rank(config["kind"], config["spec"], config["output_uri"], tracking, session)


def launch(
    kind: str,
    spec: BaseModel,
    output_uri: str,
    tracking: Tracking = Tracking(),
    ray_address: str | None = None,
    run_name: str | None = None,
    local_session: Any = None,
    callbacks: Sequence[Any] = (),
    report_log_steps: bool = False,
) -> dict[str, Any]:
    """Run stage `kind` to completion (resuming from its checkpoints) and return its outputs.

    local_session: the session of an in-process worker stage (default: `build_local_session`,
    on `output_uri/checkpoints`); callbacks: Ray Train callbacks of a multi-worker run (a Tune
    trial passes its report callback); report_log_steps: its workers report metrics at every
    log step too (a Tune trial's, for ASHA). run_name: the Ray Train run (default: kind-spec hash).
    """
    stage = stage_kind(kind)
    _name_stage(tracking)
    if stage.shape == "driver":
        _write_outputs(output_uri, stage.entry()(spec, _make_tracker(tracking), output_uri))
    elif spec.scaling.num_workers == 0:
        session = local_session or build_local_session(spec, output_uri)
        _run_on_this_rank(kind, spec.model_dump(mode="json"), output_uri, tracking, session)
    else:
        ensure_ray(ray_address)
        build_trainer(kind, spec, output_uri, tracking, run_name, callbacks, report_log_steps).fit()
    return json.loads(storage.read_bytes(storage.join(output_uri, OUTPUTS_FILE)))


def build_trainer(kind: str, spec: BaseModel, output_uri: str, tracking: Tracking = Tracking(),
                  run_name: str | None = None, callbacks: Sequence[Any] = (), report_log_steps: bool = False):
    """The Ray Train trainer of a worker stage with `spec.scaling.num_workers` >= 1.

    Run state and checkpoints live under `output_uri/ray/<run name>`; the run name is tied
    to the spec hash, so rerunning the same spec resumes its checkpoints (Ray restores a run
    by name) and a changed spec starts a new run.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling, spec_hash = spec.scaling, hash_of(spec)
    ray_root = storage.join(output_uri, "ray")
    ray_fs, ray_path = storage.pyarrow_filesystem(ray_root)
    name = run_name or f"{kind}-{spec_hash}"
    workers = (scaling.min_workers, scaling.num_workers) if scaling.min_workers else scaling.num_workers
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "kind": kind,
            "spec": spec.model_dump(mode="json"),
            "spec_hash": spec_hash,
            "output_uri": output_uri,
            "tracking": asdict(tracking),
            "checkpoint_root": storage.join(ray_root, name),
            "report_log_steps": report_log_steps,
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
            # The newest k by recency (no score attribute): a resume needs the latest; the best
            # is kept apart by rank 0 (session.BestKeeper).
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoint_policy(spec)[0]),
            callbacks=list(callbacks),
        ),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        datasets=feed_datasets(kind, spec) or None,
    )


def feed_datasets(kind: str, spec: BaseModel) -> dict[str, Any]:
    """The trainer's `datasets`: with `data.feed: ray_data` the stage's clip dataset, built here
    once and split between the workers by Ray Train (h2s_dist.data.ray_feed); else none."""
    data = getattr(spec, "data", None)
    if getattr(data, "feed", "loader") != "ray_data":
        return {}
    from h2s_dist.data.ray_feed import FEED_DATASET

    return {FEED_DATASET: stage_kind(kind).build_task(spec).clip_dataset(spec.loop.seed)}
