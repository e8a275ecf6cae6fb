"""The layout rule: a job that may span nodes writes only where every node sees."""

from __future__ import annotations

import pathlib
import shlex

import pytest

from h2s_dist import cli
from h2s_dist.config import JobSpecError, validate_job
from h2s_dist.pipeline import layout

S3, SERVER = "s3://runs/q", "http://mlflow:5000"


def _problems(workspace: str, tracking: str, *, shared: bool = False, address: str | None = None, nodes: int = 1,
              submitted_to: str | None = None) -> list[str]:
    reason = layout.multi_node_reason(address, nodes, submitted_to)
    return [field for field, _ in layout.layout_problems(workspace, tracking, workspace_shared=shared, reason=reason)]


def test_one_local_node_allows_local_paths():
    assert _problems(".h2s/jobs/q", "sqlite:///.h2s/mlflow.db") == []
    assert _problems("/data/ws", "file:///data/mlruns", address="local") == []  # "local" starts a new one-node Ray


@pytest.mark.parametrize("where", [dict(address="ray://head:10001"), dict(address="auto"), dict(nodes=2),
                                   dict(submitted_to="http://head:8265")])
def test_a_job_that_may_span_nodes_refuses_node_local_places(where):
    assert _problems(".h2s/jobs/q", "sqlite:///.h2s/mlflow.db", **where) == ["workspace", "tracking_uri"]
    assert _problems("file:///data/ws", SERVER, **where) == ["workspace"]
    assert _problems(S3, "file:///data/mlruns", **where) == ["tracking_uri"]


@pytest.mark.parametrize("where", [dict(address="ray://head:10001"), dict(nodes=3), dict(submitted_to="http://h:8265")])
def test_s3_workspace_and_tracking_server_are_allowed_anywhere(where):
    assert _problems(S3, SERVER, **where) == []
    assert _problems(S3, "https://mlflow.example.com", **where) == []


def test_workspace_shared_declares_local_paths_visible_to_every_node():
    assert _problems("/nfs/ws", "sqlite:////nfs/mlflow.db", shared=True, nodes=4) == []


def _job(tmp_path: pathlib.Path, **fields):
    return validate_job({"name": "q", "stages": [{"name": "data", "kind": "ingest", "source": "synthetic",
                                                  "synthetic": {"num_videos": 4}}], **fields}, "q.yaml")


def test_check_names_the_fields_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    job = _job(tmp_path)
    layout.check_layout(job)  # no address, not connected: one node
    with pytest.raises(JobSpecError) as err:
        layout.check_layout(job, ray_address="ray://head:10001")
    text = str(err.value)
    assert "workspace: .h2s/jobs/q is a path on this node only" in text and "s3://" in text
    assert "workspace_shared: true" in text
    assert "tracking_uri: unset, so the default: sqlite:///.h2s/mlflow.db is a store on this node only" in text
    assert "tracking_uri: http://" in text
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # what Ray sets in a submitted job's driver
    with pytest.raises(JobSpecError, match="workspace"):
        layout.check_layout(job)


def test_submit_refuses_a_local_workspace_before_contacting_the_cluster(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tmp_path / "q.yaml"
    spec.write_text("name: q\nstages:\n  - {name: data, kind: ingest, source: synthetic, synthetic: {num_videos: 4}}\n")
    assert cli.main(["submit", str(spec), "--address", "http://127.0.0.1:1"]) == 2  # port 1: nothing listens
    err = capsys.readouterr().err
    assert f"{spec}: workspace: " in err and f"{spec}: tracking_uri" in err


def test_submit_pins_the_checked_workspace_and_store_as_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = _job(tmp_path, workspace_shared=True)
    assert layout.pinned_overrides(job) == [f'workspace="{tmp_path}/.h2s/jobs/q"',
                                            f'tracking_uri="sqlite:///{tmp_path}/.h2s/mlflow.db"']
    assert layout.pinned_overrides(_job(tmp_path, workspace=S3 + "/", tracking_uri=SERVER)) == [
        f'workspace="{S3}"', f'tracking_uri="{SERVER}"']
    entrypoint, _ = cli.submission(str(cli.find_repo_root(pathlib.Path(cli.__file__)) / "jobs" / "quickstart.yaml"),
                                   layout.pinned_overrides(job), [], False, [])
    assert shlex.split(entrypoint)[-2:] == ["--set", f'tracking_uri="sqlite:///{tmp_path}/.h2s/mlflow.db"']
    from h2s_dist.config import load_job

    repo_job = cli.find_repo_root(pathlib.Path(cli.__file__)) / "jobs" / "quickstart.yaml"
    pinned = load_job(repo_job, layout.pinned_overrides(job))  # what the cluster's `h2s run` sees
    assert (pinned.workspace, pinned.tracking_uri) == (f"{tmp_path}/.h2s/jobs/q", f"sqlite:///{tmp_path}/.h2s/mlflow.db")


def test_an_ingest_stage_output_outside_the_workspace_follows_the_same_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ingest = {"name": "data", "kind": "ingest", "source": "synthetic", "synthetic": {"num_videos": 4}}
    job = validate_job({"name": "q", "workspace": S3, "tracking_uri": SERVER,
                        "stages": [{**ingest, "output": "/data/synth"}]}, "q.yaml")
    layout.check_layout(job)  # one node
    with pytest.raises(JobSpecError) as err:
        layout.check_layout(job, ray_address="ray://head:10001")
    assert [field for field, _ in err.value.problems] == ["stages[0].output"]
    assert "output: s3://" in str(err.value) and "workspace_shared: true" in str(err.value)
    shared = validate_job({**job.model_dump(mode="json", exclude_none=True), "workspace_shared": True}, "q.yaml")
    layout.check_layout(shared, ray_address="ray://head:10001")
    on_s3 = validate_job({"name": "q", "workspace": S3, "tracking_uri": SERVER,
                          "stages": [{**ingest, "output": "s3://data/synth"}]}, "q.yaml")
    layout.check_layout(on_s3, ray_address="ray://head:10001")


@pytest.fixture
def ingest_calls(monkeypatch):
    """Replace the ingest itself: a refused command must never reach it."""
    from h2s_dist.data import ingest as ingest_lib

    calls = []
    monkeypatch.setattr(ingest_lib, "build_listing", lambda *a, **k: calls.append("listing"))
    monkeypatch.setattr(ingest_lib, "ingest", lambda *a, **k: calls.append("ingest") or _Report())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


class _Report:
    def summary(self) -> str:
        return "ingested"


@pytest.mark.parametrize("where", [["--address", "ray://head:10001"], ["--address", "auto"], "RAY_ADDRESS", "nodes"])
def test_ingest_cli_refuses_a_node_local_output_on_a_cluster(where, tmp_path, monkeypatch, capsys, ingest_calls):
    if where == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "auto")
    if where == "nodes":  # already connected to a cluster of two nodes
        monkeypatch.setattr(layout, "connected_num_nodes", lambda: 2)
    extra = where if isinstance(where, list) else []
    out = tmp_path / "synth"
    assert cli.main(["ingest", "synthetic", "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert f"--output: {out} is a path on this node only" in err
    assert "--output s3://" in err and "--output-shared" in err
    assert ingest_calls == [] and not out.exists()  # refused before any work


@pytest.mark.parametrize("args", [["--output", "s3://data/synth"], ["--output", "OUT", "--output-shared"],
                                  ["--output", "OUT", "--num-tasks", "0"]])
def test_ingest_cli_allows_s3_a_declared_shared_path_or_no_ray_tasks(args, tmp_path, capsys, ingest_calls):
    args = [str(tmp_path / "synth") if a == "OUT" else a for a in args]
    assert cli.main(["ingest", "synthetic", *args, "--address", "ray://head:10001"]) == 0
    assert ingest_calls == ["listing", "ingest"]


def test_ingest_cli_allows_a_local_output_on_one_node(tmp_path, ingest_calls):
    assert cli.main(["ingest", "synthetic", "--output", str(tmp_path / "synth")]) == 0  # an embedded local Ray
    assert cli.main(["ingest", "synthetic", "--output", str(tmp_path / "synth"), "--address", "local"]) == 0
    assert ingest_calls == ["listing", "ingest"] * 2
