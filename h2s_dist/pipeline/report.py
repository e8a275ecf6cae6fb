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


# The rows of the results table printed when a job ends, in the paper's Table 2 order:
# (label, accuracy metric stream, fps metric). Rows whose stream was not scored are left out.
RESULT_ROWS = (
    ("Spatial stream (RGB)", "spatial", "fps/spatial"),
    ("TV-L1 two-stage temporal stream", "tvl1", "fps/tvl1_two_stage"),
    ("Two-stream (spatial + TV-L1)", "two_stream_tvl1", "fps/two_stream_tvl1"),
    ("Stacked temporal stream (MotionNet)", "stacked", "fps/stacked"),
    ("Hidden two-stream (spatial + stacked)", "hidden_two_stream", "fps/hidden_two_stream"),
)


def results_table(metrics: dict[str, float], title: str = "results") -> str:
    """An evaluate stage's metrics as the table a job ends with: per stream top-1, top-5 and
    frames per second (the test protocol's, on this machine), then hidden two-stream's speed
    over the TV-L1 two-stage pipeline's, the paper's speed claim. '' when nothing was scored."""
    rows = [(label, metrics[f"accuracy/{stream}/top1"], metrics.get(f"accuracy/{stream}/top5"), metrics.get(fps))
            for label, stream, fps in RESULT_ROWS if f"accuracy/{stream}/top1" in metrics]
    if not rows:
        return ""
    width = max(len(label) for label, *_ in rows)
    videos = int(metrics.get("eval/videos", 0))
    lines = [f"{title} ({videos} test videos)" if videos else title,
             f"  {'stream':<{width}}  {'top-1':>6}  {'top-5':>6}  {'fps':>7}"]
    for label, top1, top5, fps in rows:
        lines.append(f"  {label:<{width}}  {100 * top1:5.1f}%  {_percent(top5):>6}  {_number(fps):>7}")
    hidden = metrics.get("fps/hidden_two_stream")
    # The paper's speeds (Table 2, one Titan X): hidden two-stream 120.48 fps, TV-L1 two-stage
    # 14.75, two-stream with TV-L1 12.8.
    for fps, name, paper in (("fps/tvl1_two_stage", "the TV-L1 two-stage stream", 120.48 / 14.75),
                             ("fps/two_stream_tvl1", "two-stream with TV-L1", 120.48 / 12.8)):
        if hidden and metrics.get(fps):
            lines.append(f"  hidden two-stream fps / {name} fps: {hidden / metrics[fps]:.1f}x (paper, on a GPU: {paper:.1f}x)")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
