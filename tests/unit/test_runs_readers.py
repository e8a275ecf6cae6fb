"""The pieces of `h2s runs` that need no store: REST answers parsed, which reader a URI gets,
and a job's table rows assembled from whatever a reader returns.

The REST answer below is one run of a real `runs/search` answer of MLflow 3.17's tracking
server (recorded from `h2s tracking-server`, ids and times kept, artifact path shortened);
tests/integration/test_runs_report.py checks the same reader against a live server.
"""

from __future__ import annotations

import math
import pathlib

import pytest

from h2s_dist.pipeline import report
from h2s_dist.pipeline.run_rows import RunRow
from h2s_dist.pipeline.runs_rest import auth_header, rest_readable, run_row
from h2s_dist.pipeline.runs_sqlite import sqlite_path

RECORDED_RUN = {
    "info": {
        "run_uuid": "c3f734b0ecea4572b913b6a02e9f5c89", "experiment_id": "1", "run_name": "data",
        "user_id": "unknown", "status": "FINISHED", "start_time": 1796167464786, "end_time": 1796167464856,
        "artifact_uri": "file:///tmp/mlartifacts/c3f734b0ecea4572b913b6a02e9f5c89/artifacts",
        "lifecycle_stage": "active", "run_id": "c3f734b0ecea4572b913b6a02e9f5c89",
    },
    "data": {
        "metrics": [
            {"key": "loss/total", "value": 0.3333333333333333, "timestamp": 1796167464820, "step": 1},
            {"key": "accuracy/spatial/top1", "value": 0.5, "timestamp": 1796167464820, "step": 1},
        ],
        "tags": [
            {"key": "h2s.run_type", "value": "stage"}, {"key": "h2s.job", "value": "quick2"},
            {"key": "h2s.stage", "value": "data"}, {"key": "h2s.stage_kind", "value": "ingest"},
            {"key": "h2s.reused", "value": "true"},
            {"key": "mlflow.parentRunId", "value": "1c3b8c7430844d48a9acb34e7cc0f252"},
            {"key": "mlflow.runName", "value": "data"},
        ],
    },
    "inputs": {},
    "outputs": {},
}


def test_recorded_rest_run_becomes_the_row_mlflow_client_would_give():
    row = run_row(RECORDED_RUN)
    assert row == RunRow(
        run_id="c3f734b0ecea4572b913b6a02e9f5c89", run_name="data", experiment_id="1", status="FINISHED",
        start_time=1796167464786, tags={t["key"]: t["value"] for t in RECORDED_RUN["data"]["tags"]},
        metrics={"loss/total": 0.3333333333333333, "accuracy/spatial/top1": 0.5},
    )


def test_rest_run_without_data_with_string_int64_and_nan_metric_is_read():
    # Protobuf JSON leaves empty lists out, may write int64 as strings and NaN as "NaN".
    bare = run_row({"info": {"run_id": "r", "experiment_id": "3", "status": "RUNNING", "start_time": "17"}})
    assert (bare.tags, bare.metrics, bare.start_time, bare.run_name) == ({}, {}, 17, None)
    nan = run_row({"info": {"run_id": "r", "experiment_id": "3"},
                   "data": {"metrics": [{"key": "loss/total", "value": "NaN", "step": 2}]}})
    assert math.isnan(nan.metrics["loss/total"])


def test_auth_header_is_basic_before_bearer_like_mlflow_client():
    assert auth_header({}) is None
    assert auth_header({"MLFLOW_TRACKING_TOKEN": "t"}) == "Bearer t"
    both = {"MLFLOW_TRACKING_TOKEN": "t", "MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"}
    assert auth_header(both) == "Basic dTpw"  # base64("u:p")


def test_rest_reader_only_for_servers_without_client_only_settings():
    assert rest_readable("http://127.0.0.1:5000", {}) and rest_readable("https://mlflow.example", {})
    assert rest_readable("http://h:5000", {"MLFLOW_TRACKING_INSECURE_TLS": "false"})
    assert not rest_readable("http://h:5000", {"MLFLOW_TRACKING_INSECURE_TLS": "true"})
    assert not rest_readable("http://h:5000", {"MLFLOW_TRACKING_SERVER_CERT_PATH": "/ca.pem"})
    assert not rest_readable("sqlite:////tmp/mlflow.db", {}) and not rest_readable("databricks", {})


def test_sqlite_path_is_the_file_of_a_plain_sqlite_uri():
    assert sqlite_path("sqlite:////data/h2s/mlflow.db") == pathlib.Path("/data/h2s/mlflow.db")
    assert sqlite_path("sqlite:///relative.db") == pathlib.Path("relative.db")
    assert sqlite_path("sqlite:////data/mlflow.db?timeout=20") is None  # SQLAlchemy options: MlflowClient's
    assert sqlite_path("http://127.0.0.1:5000") is None and sqlite_path("file:///tmp/mlruns") is None


class ListReader:
    """A run_rows reader over lists of RunRow."""

    def __init__(self, jobs: list[RunRow], stages: dict[str, list[RunRow]]):
        self.jobs, self.stages = jobs, stages

    def experiment_ids(self, name):
        return [] if name == "empty" else ["1"]

    def job_runs(self, experiment_ids, limit):
        return self.jobs[:limit]

    def stage_runs(self, job):
        return self.stages.get(job.run_id, [])


def row(run_id: str, name: str | None = None, tags: dict[str, str] | None = None) -> RunRow:
    return RunRow(run_id=run_id, run_name=name, experiment_id="1", status="FINISHED", start_time=None,
                  tags=tags or {}, metrics={})


def test_job_rows_name_the_job_by_tag_else_by_run_name_and_mark_reused_stages():
    job = row("j1", "run-name")
    stages = [row("s1", "data", {"h2s.stage": "data", "h2s.reused": "true"}), row("s2", "other")]
    [found] = report.collect_jobs(ListReader([job], {"j1": stages}), limit=5, experiment=None)
    assert (found["job"], found["start"]) == ("run-name", "-")
    assert [(s["name"], s["kind"], s["reused"]) for s in found["stages"]] == [("data", "?", True), ("other", "?", False)]
    assert report.collect_jobs(ListReader([job], {}), limit=5, experiment="empty") == []


def test_limit_below_one_is_a_user_error():
    with pytest.raises(ValueError, match="--limit must be at least 1"):
        report.collect_jobs(ListReader([], {}), limit=0, experiment=None)
