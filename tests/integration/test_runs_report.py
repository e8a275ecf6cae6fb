"""`h2s runs` reads a real MLflow sqlite store, and a real MLflow tracking server over it,
without importing mlflow, and finds what MlflowClient finds.

Job runs are written the way the runner writes them (MlflowTracker: a parent run tagged
h2s.run_type=job, a child per stage), then the sqlite reader, the REST reader and the
MlflowClient reader are asked the same questions.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from h2s_dist.pipeline import report
from h2s_dist.pipeline.runs_rest import RestRuns
from h2s_dist.pipeline.runs_sqlite import SqliteRuns, sqlite_path

pytestmark = pytest.mark.integration

EXPERIMENT = "runs-report"
STAGES = (("data", "ingest"), ("pretrain", "pretrain_motionnet"), ("evaluate", "evaluate"))


def _job(uri: str, experiment: str, name: str, reused: set[str] = frozenset(), status: str = "FINISHED") -> str:
    from h2s_dist.tracking import MlflowTracker

    parent = MlflowTracker.start(uri, experiment, run_name=name, tags={"h2s.run_type": "job", "h2s.job": name})
    for index, (stage, kind) in enumerate(STAGES):
        tags = {"h2s.run_type": "stage", "h2s.job": name, "h2s.stage": stage, "h2s.stage_kind": kind,
                "h2s.reused": "true" if stage in reused else "false"}
        child = MlflowTracker.start(uri, experiment, run_name=stage, parent_run_id=parent.run_id, tags=tags)
        child.log_metrics({"loss/total": 0.5 + index, "accuracy/stacked/top1": 0.25 * index}, step=3)
        child.log_metrics({"loss/total": 0.1 + index}, step=7)  # the latest value is the one shown
        child.close()
    parent.log_metrics({"job/seconds": 2.0}, step=0)
    parent.close(status)
    return parent.run_id


@pytest.fixture(scope="module")
def store(tracking_uri):
    """The session store with: two finished jobs, a failed one, one still running, a job whose
    child runs include a deleted one and a NaN metric, a deleted job, and a job in a deleted
    experiment."""
    from mlflow.tracking import MlflowClient

    from h2s_dist.tracking import MlflowTracker, ensure_experiment

    client = MlflowClient(tracking_uri)
    ids = {name: _job(tracking_uri, EXPERIMENT, name, reused={"data"} if name == "second" else set())
           for name in ("first", "second")}
    ids["failed"] = _job(tracking_uri, EXPERIMENT, "failed", status="FAILED")
    running = MlflowTracker.start(tracking_uri, EXPERIMENT, run_name="running",
                                  tags={"h2s.run_type": "job", "h2s.job": "running"})
    ids["running"] = running.run_id
    ids["odd"] = _job(tracking_uri, EXPERIMENT, "odd")
    odd_children = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                      f"tags.mlflow.parentRunId = '{ids['odd']}'", order_by=["attributes.start_time ASC"])
    client.delete_run(odd_children[0].info.run_id)
    client.log_metric(odd_children[1].info.run_id, "loss/total", math.nan, step=9)
    ids["deleted"] = _job(tracking_uri, EXPERIMENT, "deleted")
    client.delete_run(ids["deleted"])
    gone = ensure_experiment(tracking_uri, "runs-report-deleted")
    ids["in_deleted_experiment"] = _job(tracking_uri, "runs-report-deleted", "in_deleted_experiment")
    client.delete_experiment(gone)
    return {"uri": tracking_uri, "ids": ids}


def comparable(jobs: list[dict]) -> list[dict]:
    """NaN != NaN: compare metric values by their repr."""
    return [{**job, "stages": [{**s, "metrics": {k: repr(v) for k, v in s["metrics"].items()}}
                               for s in job["stages"]]} for job in jobs]


def test_sqlite_store_and_server_are_read_without_mlflow(store, tracking_server):
    assert isinstance(report.open_reader(store["uri"]), SqliteRuns)
    assert isinstance(report.open_reader(tracking_server), RestRuns)


@pytest.mark.parametrize("experiment", [EXPERIMENT, None, "no-such-experiment", "runs-report-deleted"])
@pytest.mark.parametrize("limit", [2, 50])
def test_sqlite_and_rest_readers_find_the_same_job_runs_as_mlflow_client(store, tracking_server, experiment, limit):
    reference = report.job_runs_mlflow(store["uri"], limit=limit, experiment=experiment)
    assert comparable(report.job_runs(store["uri"], limit=limit, experiment=experiment)) == comparable(reference)
    assert comparable(report.job_runs(tracking_server, limit=limit, experiment=experiment)) == comparable(reference)
    assert bool(reference) == (experiment in (EXPERIMENT, None))


def test_listing_skips_deleted_runs_and_experiments_and_keeps_the_latest_metric(store):
    jobs = {job["run_id"]: job for job in report.job_runs(store["uri"], limit=50, experiment=EXPERIMENT)}
    ids = store["ids"]
    assert ids["deleted"] not in jobs
    assert ids["in_deleted_experiment"] not in {j["run_id"] for j in report.job_runs(store["uri"], limit=50)}
    assert report.job_runs(store["uri"], experiment="runs-report-deleted") == []
    assert [s["name"] for s in jobs[ids["odd"]]["stages"]] == ["pretrain", "evaluate"]  # data was deleted
    assert math.isnan(jobs[ids["odd"]]["stages"][0]["metrics"]["loss/total"])
    assert jobs[ids["first"]]["stages"][1]["metrics"] == {"loss/total": pytest.approx(1.1), "accuracy/stacked/top1": 0.25}
    assert [s["reused"] for s in jobs[ids["second"]]["stages"]] == [True, False, False]
    assert (jobs[ids["failed"]]["status"], jobs[ids["running"]]["status"]) == ("FAILED", "RUNNING")
    assert jobs[ids["running"]]["stages"] == []


def test_listing_is_newest_first_and_limited(store):
    jobs = report.job_runs(store["uri"], limit=3, experiment=EXPERIMENT)
    ids = store["ids"]
    assert [job["run_id"] for job in jobs] == [ids["odd"], ids["running"], ids["failed"]]


def test_missing_store_lists_nothing_and_is_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    assert report.job_runs_table(uri) == "no job runs yet (h2s run SPEC creates them)"
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("where", ["sqlite", "server"])
def test_h2s_runs_prints_the_mlflow_table_without_importing_mlflow(store, tracking_server, where):
    uri = store["uri"] if where == "sqlite" else tracking_server
    command = [sys.executable, "-X", "importtime", "-m", "h2s_dist", "runs", "--tracking-uri", uri,
               "--experiment", EXPERIMENT, "--limit", "4"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not {name for name in imported if name.split(".")[0] == "mlflow"}
    reference = report.job_runs_mlflow(store["uri"], limit=4, experiment=EXPERIMENT)
    assert done.stdout == report.format_jobs(reference) + "\n"


def test_unknown_schema_falls_back_to_mlflow_client(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (run_uuid TEXT)")
    assert not SqliteRuns(sqlite_path(f"sqlite:///{path}")).readable()
