"""`h2s runs`: recent job runs (MLflow parent runs) with each stage's state and key metrics."""

from __future__ import annotations

import datetime
from typing import Any

# Metrics worth a glance, in order; the first few a stage has are shown.
KEY_METRICS = (
    "accuracy/hidden_two_stream/top1", "accuracy/stacked/top1", "accuracy/spatial/top1", "accuracy/tvl1/top1",
    "loss/total", "loss/action", "train/top1", "ingest/videos",
)


def _when(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M")


def _short_metrics(metrics: dict[str, float], count: int = 2) -> str:
    shown = [f"{name.split('/')[-2] + '/' if name.count('/') > 1 else ''}{name.split('/')[-1]}={metrics[name]:.4g}"
             for name in KEY_METRICS if name in metrics][:count]
    return " ".join(shown)


def job_runs(tracking_uri: str | None, limit: int = 10, experiment: str | None = None) -> list[dict[str, Any]]:
    """[{run_id, job, status, start, stages: [{name, kind, status, reused, metrics}]}], newest first."""
    from mlflow.tracking import MlflowClient

    from h2s_dist.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    if experiment:
        found = client.get_experiment_by_name(experiment)
        experiment_ids = [found.experiment_id] if found else []
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    parents = client.search_runs(
        experiment_ids, filter_string="tags.`h2s.run_type` = 'job'", order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    jobs = []
    for parent in parents:
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        jobs.append({
            "run_id": parent.info.run_id, "job": parent.data.tags.get("h2s.job", parent.info.run_name),
            "status": parent.info.status, "start": _when(parent.info.start_time),
            "stages": [{
                "name": c.data.tags.get("h2s.stage", c.info.run_name), "kind": c.data.tags.get("h2s.stage_kind", "?"),
                "status": c.info.status, "reused": c.data.tags.get("h2s.reused") == "true",
                "metrics": dict(c.data.metrics),
            } for c in children],
        })
    return jobs


def job_runs_table(tracking_uri: str | None, limit: int = 10, experiment: str | None = None) -> str:
    jobs = job_runs(tracking_uri, limit, experiment)
    if not jobs:
        return "no job runs yet (h2s run SPEC creates them)"
    lines = []
    for job in jobs:
        lines.append(f"{job['start']}  {job['job']:<20} {job['status']:<9} run {job['run_id']}")
        for stage in job["stages"]:
            state = "REUSED" if stage["reused"] else stage["status"]
            lines.append(f"    {stage['name']:<18} {stage['kind']:<22} {state:<9} {_short_metrics(stage['metrics'])}")
    return "\n".join(lines)
