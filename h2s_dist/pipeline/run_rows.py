"""What `h2s runs` reads of an MLflow run (`RunRow`), and the reader that goes through MLflow.

A reader has three methods, each answering as MLflow's own search would (active runs and
experiments only; runs ordered by start time, then run id):

    experiment_ids(name)     ids of the active experiments, or of the one named (may be [])
    job_runs(ids, limit)     the newest `limit` job runs (tag h2s.run_type=job), newest first
    stage_runs(job)          the child runs of one job run, oldest first

`ClientRuns` asks `MlflowClient`, so it reads every store MLflow reads; the sqlite and REST
readers (runs_sqlite, runs_rest) answer the same without importing mlflow (~9 s on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOB_RUN_FILTER = "tags.`h2s.run_type` = 'job'"
SEARCH_MAX_RESULTS = 1000  # MLflow's default page of search_runs / search_experiments


def stage_runs_filter(job_run_id: str) -> str:
    return f"tags.mlflow.parentRunId = '{job_run_id}'"


@dataclass(frozen=True)
class RunRow:
    """One MLflow run as the table needs it, whichever way it was read."""

    run_id: str
    run_name: str | None
    experiment_id: str
    status: str
    start_time: int | None
    """Milliseconds since the epoch."""
    tags: dict[str, str]
    metrics: dict[str, float]
    """Each metric's latest value (MLflow's latest_metrics)."""


class ClientRuns:
    """The reader through `MlflowClient`: slow to import, but any store MLflow supports."""

    def __init__(self, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)

    def experiment_ids(self, name: str | None) -> list[str]:
        if name is None:
            return [e.experiment_id for e in self.client.search_experiments(max_results=SEARCH_MAX_RESULTS)]
        found = self.client.get_experiment_by_name(name)  # deleted ones too: skipped like the other readers do
        return [found.experiment_id] if found is not None and found.lifecycle_stage == "active" else []

    def job_runs(self, experiment_ids: list[str], limit: int) -> list[RunRow]:
        runs = self.client.search_runs(experiment_ids, filter_string=JOB_RUN_FILTER,
                                       order_by=["attributes.start_time DESC"], max_results=limit)
        return [_row(run) for run in runs]

    def stage_runs(self, job: RunRow) -> list[RunRow]:
        runs = self.client.search_runs([job.experiment_id], filter_string=stage_runs_filter(job.run_id),
                                       order_by=["attributes.start_time ASC"], max_results=SEARCH_MAX_RESULTS)
        return [_row(run) for run in runs]


def _row(run: Any) -> RunRow:
    info = run.info
    return RunRow(run_id=info.run_id, run_name=info.run_name, experiment_id=info.experiment_id, status=info.status,
                  start_time=info.start_time, tags=dict(run.data.tags), metrics=dict(run.data.metrics))
