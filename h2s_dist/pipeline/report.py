"""`h2s runs`: recent job runs (MLflow parent runs) with each stage's state and key metrics.

    print(job_runs_table("sqlite:///.h2s/mlflow.db", limit=5))

The runs are read by the fastest reader the store allows (run_rows has the contract): a
sqlite store's tables (runs_sqlite) or a tracking server's REST API (runs_rest), neither
importing mlflow; any other store through MlflowClient (run_rows.ClientRuns).
"""

from __future__ import annotations

import datetime
from typing import Any

from h2s_dist.pipeline.run_rows import ClientRuns

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


def open_reader(tracking_uri: str) -> Any:
    """The fastest run_rows reader for this store: sqlite tables or the REST API read directly
    (importing mlflow alone takes ~9 s on 2 cores), else MlflowClient."""
    if tracking_uri.startswith("sqlite:"):
        from h2s_dist.pipeline.runs_sqlite import SqliteRuns, sqlite_path

        path = sqlite_path(tracking_uri)
        if path is not None and (reader := SqliteRuns(path)).readable():
            return reader
    elif tracking_uri.startswith(("http:", "https:")):
        from h2s_dist.pipeline.runs_rest import RestRuns, rest_readable

        if rest_readable(tracking_uri):
            return RestRuns(tracking_uri)
    return ClientRuns(tracking_uri)


def job_runs(tracking_uri: str | None, limit: int = 10, experiment: str | None = None) -> list[dict[str, Any]]:
    """[{run_id, job, status, start, stages: [{name, kind, status, reused, metrics}]}], newest first."""
    from h2s_dist.tracking import resolve_tracking_uri

    return collect_jobs(open_reader(resolve_tracking_uri(tracking_uri)), limit, experiment)


def job_runs_mlflow(tracking_uri: str | None, limit: int = 10, experiment: str | None = None) -> list[dict[str, Any]]:
    """`job_runs` read through MlflowClient whatever the store (the reference the fast readers match)."""
    from h2s_dist.tracking import resolve_tracking_uri

    return collect_jobs(ClientRuns(resolve_tracking_uri(tracking_uri)), limit, experiment)


def collect_jobs(reader: Any, limit: int, experiment: str | None) -> list[dict[str, Any]]:
    """The job runs a run_rows reader finds, each with its stages, as `job_runs` returns them."""
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    experiment_ids = reader.experiment_ids(experiment)
    if not experiment_ids:
        return []
    jobs = []
    for parent in reader.job_runs(experiment_ids, limit):
        jobs.append({
            "run_id": parent.run_id, "job": parent.tags.get("h2s.job", parent.run_name),
            "status": parent.status, "start": _when(parent.start_time),
            "stages": [{
                "name": c.tags.get("h2s.stage", c.run_name), "kind": c.tags.get("h2s.stage_kind", "?"),
                "status": c.status, "reused": c.tags.get("h2s.reused") == "true", "metrics": dict(c.metrics),
            } for c in reader.stage_runs(parent)],
        })
    return jobs


def job_runs_table(tracking_uri: str | None, limit: int = 10, experiment: str | None = None) -> str:
    return format_jobs(job_runs(tracking_uri, limit, experiment))


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    """The `h2s runs` table of `job_runs`'s answer: a line per job, an indented line per stage."""
    if not jobs:
        return "no job runs yet (h2s run SPEC creates them)"
    lines = []
    for job in jobs:
        lines.append(f"{job['start']}  {job['job']:<20} {job['status']:<9} run {job['run_id']}")
        for stage in job["stages"]:
            state = "REUSED" if stage["reused"] else stage["status"]
            lines.append(f"    {stage['name']:<18} {stage['kind']:<22} {state:<9} {_short_metrics(stage['metrics'])}")
    return "\n".join(lines)
