"""Every stage kind in one table: its spec model, its entry point and its shape.

    stage = STAGES["pretrain_motionnet"]
    spec = stage.spec.model_validate(data)       # pure pydantic: no torch, Ray or MLflow
    outputs = stage.entry()(spec, session, tracker, output_uri)

Two shapes:
  - `worker` stages train or score on ranks: `run(spec, session, tracker, output_uri)` runs on
    every rank, in this process (`scaling.num_workers: 0`) or on N Ray Train workers; their
    spec has `scaling`.
  - `driver` stages run once, in the job's process: `run(spec, tracker, output_uri)`; they
    bring their own parallelism (decode processes, Ray tasks, Tune trials) and have no `scaling`.

Adding a stage kind is one spec class in h2s_dist/specs/, one module with `run`, and one
line here. The entry module is imported only when the stage runs, so validating a job
imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from h2s_dist.specs.driver import IngestSpec, TuneSpec, TVL1FlowsSpec
from h2s_dist.specs.evaluate import EvaluateSpec
from h2s_dist.specs.training import FinetuneSpec, PretrainSpec, SpatialSpec, TemporalFlowsSpec


@dataclass(frozen=True)
class StageKind:
    kind: str
    spec: type[BaseModel]
    entry_point: str
    """`module:function` of the stage's `run`."""
    shape: Literal["driver", "worker"]
    task_class: str | None = None
    """`module:Class` of a training stage's Task (a train.task.StreamTask): the launcher builds
    it in the driver for the `ray_data` feed's dataset (`data.feed`)."""

    def entry(self) -> Callable[..., dict[str, Any]]:
        module, _, function = self.entry_point.partition(":")
        return getattr(importlib.import_module(module), function)

    def build_task(self, spec: BaseModel) -> Any:
        """The stage's Task for `spec` (training stages only)."""
        if self.task_class is None:
            raise ValueError(f"stage kind {self.kind!r} reads no clip stream")
        module, _, name = self.task_class.partition(":")
        return getattr(importlib.import_module(module), name)(spec)


STAGES: dict[str, StageKind] = {
    stage.kind: stage
    for stage in (
        StageKind("ingest", IngestSpec, "h2s_dist.train.stages.ingest:run", "driver"),
        StageKind("pretrain_motionnet", PretrainSpec, "h2s_dist.train.stages.pretrain:run", "worker",
                  "h2s_dist.train.stages.pretrain:PretrainTask"),
        StageKind("finetune_stacked", FinetuneSpec, "h2s_dist.train.stages.finetune:run", "worker",
                  "h2s_dist.train.stages.finetune:FinetuneTask"),
        StageKind("train_spatial", SpatialSpec, "h2s_dist.train.stages.spatial:run", "worker",
                  "h2s_dist.train.stages.spatial:SpatialTask"),
        StageKind("tvl1_flows", TVL1FlowsSpec, "h2s_dist.train.stages.tvl1_flows:run", "driver"),
        StageKind("train_temporal_flows", TemporalFlowsSpec, "h2s_dist.train.stages.temporal_flows:run", "worker",
                  "h2s_dist.train.stages.temporal_flows:TemporalFlowsTask"),
        StageKind("evaluate", EvaluateSpec, "h2s_dist.train.stages.evaluate:run", "worker"),
        StageKind("tune", TuneSpec, "h2s_dist.train.stages.tune:run", "driver"),
    )
}


def stage_kind(kind: str) -> StageKind:
    if kind not in STAGES:
        raise ValueError(f"unknown stage kind {kind!r}; known: {', '.join(sorted(STAGES))}")
    return STAGES[kind]
