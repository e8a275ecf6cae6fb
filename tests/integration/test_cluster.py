"""Cluster files carry what their tools require, and `h2s submit` reaches a real Ray head:
a local head on 127.0.0.1 with the dashboard (Jobs API) and Ray token authentication, which
refuses requests without the token or with a wrong one (`h2s submit` among them), accepts a
tiny job spec submitted with it, followed with `h2s status` / `h2s logs` to success, and the
head's processes gone afterwards; and
a two-node Ray cluster on this machine running a job through the job runner (its workspace on
the loopback S3 server, its runs on an MLflow tracking server), whose pretraining has one worker
per node, loses its second node mid-run and resumes from the last checkpoint when the node is back.

The head is started with `ray start --block` in its own process group and a private temp
dir, and stopped by signalling that group: `ray stop` would stop every Ray on this machine,
including other people's.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
BIN = pathlib.Path(sys.executable).parent

STEPS = 150  # two-node run length


def test_cluster_launcher_config_has_the_fields_ray_up_requires():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(config)
    assert config["provider"]["type"] == "aws" and config["head_node_type"] in config["available_node_types"]
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1 and "node_config" in gpu
    assert config["docker"]["image"] and any("MLFLOW_TRACKING_URI" in o for o in config["docker"]["run_options"])
    assert config["setup_commands"] and config["head_start_ray_commands"] and config["worker_start_ray_commands"]


def test_dockerfile_installs_a_cuda_torch_before_the_project():
    text = (CLUSTER / "Dockerfile").read_text()
    torch_at = text.index("pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
    assert text.startswith("#") and "FROM rayproject/ray:" in text and "-cu12" in text
    assert torch_at < text.index('pip install --no-cache-dir ".[baseline]"')


# ----------------------------------------------------------------------------- a real head


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_mentioning(marker: str) -> list[int]:
    found = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes() and int(cmdline.parent.name) != os.getpid():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def _http_status(url: str, token: str | None = None) -> int:
    """The HTTP status of GET `url`, sending `token` the way Ray's clients do (a bearer header)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _wait_for_dashboard(port: int, token: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _http_status(f"http://127.0.0.1:{port}/api/version", token) == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Ray dashboard on port {port} did not answer in {timeout_s}s")


@pytest.fixture
def ray_head():
    """A Ray head of our own on 127.0.0.1 with token authentication:
    (dashboard address, env for h2s commands without the token, the token)."""
    import secrets

    temp_dir = tempfile.mkdtemp(prefix="h2sray", dir="/tmp")  # short: Ray's sockets live under it
    port, dashboard = _free_port(), _free_port()
    token = secrets.token_hex(32)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    head_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # what the cluster manifests set
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=head_env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_dashboard(dashboard, token)
        yield f"http://127.0.0.1:{dashboard}", env, token
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while _pids_mentioning(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _pids_mentioning(temp_dir)
        for pid in left:  # ours: their command lines name our private temp dir
            os.kill(pid, signal.SIGKILL)
        assert not left, f"Ray processes were left after stopping the head: {left}"


def _h2s(env, *args: str, timeout_s: float = 60) -> str:
    done = subprocess.run([str(BIN / "h2s"), *args], env=env, capture_output=True, text=True, timeout=timeout_s, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _run_submit(env, spec: pathlib.Path, address: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "h2s"), "submit", str(spec), "--address", address, "--submission-id",
                           "h2s-submit-test"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def _submit(env, spec: pathlib.Path, address: str, timeout_s: float = 60) -> str:
    """`h2s submit`, retried while the head's job agent is still starting (HTTP 500 "No available agent")."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = _run_submit(env, spec, address)
        if done.returncode == 0:
            return done.stdout.strip()
        if "No available agent" not in done.stderr or time.monotonic() > deadline:
            raise AssertionError(done.stderr)
        time.sleep(2)


def test_token_cluster_refuses_unauthenticated_submit_and_runs_an_authenticated_one(ray_head, tmp_path):
    address, anonymous, token = ray_head
    # The dashboard and the Jobs API answer nothing without the token: 401 without, 403 with a wrong one.
    assert _http_status(f"{address}/api/jobs/") == 401
    assert _http_status(f"{address}/api/jobs/", "0" * 64) == 403
    assert _http_status(f"{address}/api/jobs/", token) == 200
    env = {**anonymous, "RAY_AUTH_TOKEN": token}  # RAY_AUTH_MODE=token is implied by the token
    spec = REPO / "jobs" / f".test_submit_{os.getpid()}.yaml"  # inside the checkout: shipped as working_dir
    spec.write_text(yaml.safe_dump({
        "name": "submit-test",
        "workspace": str(tmp_path / "ws"),
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "workspace_shared": True,  # a cluster of one machine: its paths are every node's
        "stages": [{"name": "data", "kind": "ingest", "source": "synthetic", "num_tasks": 0,
                    "synthetic": {"num_videos": 4, "num_frames": 16, "height": 48, "width": 64}}],
    }))
    try:
        for refused_env, status in (({**anonymous, "RAY_AUTH_MODE": "disabled"}, "401"),
                                    ({**anonymous, "RAY_AUTH_TOKEN": "0" * 64}, "403")):
            refused = _run_submit(refused_env, spec, address)
            assert refused.returncode == 2 and "refused" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr, \
                (status, refused.stderr)
        submission_id = _submit(env, spec, address)  # the same id: the refused ones created no job
    finally:
        spec.unlink()
    assert submission_id == "h2s-submit-test"
    deadline, status = time.monotonic() + 150, ""
    while time.monotonic() < deadline:
        status = _h2s(env, "status", submission_id, "--address", address)
        if any(state in status for state in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(2)
    logs = _h2s(env, "logs", submission_id, "--address", address)
    assert "SUCCEEDED" in status, f"{status}\n{logs[-3000:]}"
    assert "[h2s] job submit-test finished" in logs
    assert "[h2s] stage data (ingest): finished" in logs
    assert (tmp_path / "ws").is_dir()


# ----------------------------------------------------------------------------- two nodes on this machine


def test_a_local_workspace_is_refused_on_a_two_node_cluster_before_any_work(tmp_path, monkeypatch):
    """Two Ray nodes on this machine: a job with a local workspace and sqlite store is refused,
    naming `workspace` and `tracking_uri`, both when the cluster is given by address and when
    this process is already connected to it; nothing is written. An s3:// workspace with a
    tracking server passes the same check."""
    import ray
    from ray.cluster_utils import Cluster

    from h2s_dist.config import JobSpecError, validate_job
    from h2s_dist.pipeline import layout, runner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stages = [{"name": "data", "kind": "ingest", "source": "synthetic", "synthetic": {"num_videos": 4}}]
    local = validate_job({"name": "two-nodes", "workspace": str(tmp_path / "ws"),
                          "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "stages": stages})
    remote = validate_job({"name": "two-nodes", "workspace": "s3://runs/two-nodes",
                           "tracking_uri": "http://127.0.0.1:5000", "stages": stages})
    assert not ray.is_initialized(), "another test left Ray running in this process"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        address = cluster.address
        with pytest.raises(JobSpecError) as by_address:
            runner.run_job(local, ray_address=address, echo=lambda line: None)
        ray.init(address=address)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)  # counted nodes, not an address, must refuse now
        assert layout.connected_num_nodes() == 2
        with pytest.raises(JobSpecError) as by_nodes:
            runner.run_job(local, echo=lambda line: None)
        layout.check_layout(remote)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert [f for f, _ in by_address.value.problems] == [f for f, _ in by_nodes.value.problems] == ["workspace", "tracking_uri"]
    assert f"the Ray cluster at {address}" in str(by_address.value)
    assert "has 2 nodes" in str(by_nodes.value) and "s3://" in str(by_nodes.value)
    assert list(tmp_path.iterdir()) == []  # refused before any work: no store, no stage folder


def test_pretraining_spans_two_nodes_and_resumes_after_losing_one(s3_env, tracking_server, tmp_path, monkeypatch):
    """The job runner, connected by address to two Ray nodes (ray.cluster_utils.Cluster) of one
    CPU each, runs a job whose workspace is on the loopback S3 server and whose MLflow store is
    a tracking server: the layout check passes, the ingest writes to S3, and the pretraining's
    two workers of one CPU land one on each node. The second node is removed after a
    checkpoint and added back: the run restarts (max_failures) from that checkpoint on both
    nodes again. The nodes know the S3 credentials (a cluster's own) but not this process's
    endpoint or region, which reach their workers only through the job's runtime_env
    (ray_env.py); rank 0, on either node, logs over HTTP. Nothing is written locally."""
    import threading

    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from h2s_dist.config import validate_job
    from h2s_dist.data import storage
    from h2s_dist.pipeline.runner import run_job
    from h2s_dist.tasks import ensure_ray
    from tests.conftest_parts.data import TINY_VIDEO

    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # a stray relative write (./mlruns, .h2s/jobs) would land here
    workspace = s3_env
    job = validate_job({
        "name": "two-nodes", "workspace": workspace, "tracking_uri": tracking_server,
        "stages": [
            # 36 tiny videos, ~6 shards of ~190 kB: each worker reads shards of its own.
            {"name": "data", "kind": "ingest", "source": "synthetic", "num_tasks": 0, "encoding": "jpeg",
             "size": None, "shard_size_mb": 0.19, "synthetic": {"num_videos": 36, **TINY_VIDEO}},
            {"name": "pretrain", "kind": "pretrain_motionnet", "needs": ["data"], "motionnet": {"flavour": "tiny"},
             "data": {"dataset": "${data.dataset}", "crop_size": 32, "batch_size": 2, "loader_workers": 0,
                      "shuffle_buffer": 4, "epoch_length_samples": 32},
             "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
             # Long enough that the node goes before the run ends (30 steps sometimes finished first).
             "loop": {"max_steps": STEPS, "log_every_steps": 5, "picture_every_steps": STEPS,
                      "checkpoint_every_steps": 5},
             "scaling": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 1}},
        ],
    })
    assert not ray.is_initialized(), "another test left Ray running in this process"
    with _node_env():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}})
        second = cluster.add_node(num_cpus=1, resources={"node_b": 1})
    events: list[str] = []
    lines: list[str] = []
    # Nodes are added and removed from this (the main) thread: starting a node installs
    # signal handlers, which only the main thread may do. The job goes in a thread instead;
    # it connects here first, as run_job's launch would (ensure_ray, with the runtime_env).
    try:
        ensure_ray(cluster.address)
        on_b = ray.remote(os.getenv).options(num_cpus=0, resources={"node_b": 0.01})
        assert ray.get(on_b.remote("H2S_S3_ENDPOINT_URL")) == os.environ["H2S_S3_ENDPOINT_URL"]
        assert {n["Resources"].get("node_b", 0) for n in ray.nodes() if n["Alive"]} == {0, 1}
        done: dict = {}

        def run() -> None:
            try:
                done["result"] = run_job(job, ray_address=cluster.address, echo=lines.append)
            except BaseException as err:  # noqa: BLE001 - re-raised below, in the test's thread
                done["error"] = err

        runner = threading.Thread(target=run)
        runner.start()
        deadline = time.monotonic() + 240
        # Lose the node only once Ray's controller has registered a checkpoint: a step_N folder
        # is written by the worker before the controller records it, and a node lost in
        # between leaves the restarted run nothing to resume from (it starts again at step 0).
        while time.monotonic() < deadline and not _registered_checkpoint(workspace) and runner.is_alive():
            time.sleep(0.5)
        cluster.remove_node(second)
        events.append("removed")
        time.sleep(3)  # the run notices, and cannot place its second worker on one CPU
        with _node_env():
            cluster.add_node(num_cpus=1, resources={"node_b": 1})
        events.append("added")
        runner.join(timeout=300)
        assert not runner.is_alive(), "the run did not finish after the node came back"
        if "error" in done:
            raise done["error"]
        result = done["result"]
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert events == ["removed", "added"]
    stage = result.stages["pretrain"]
    outputs = stage.outputs
    assert outputs["steps"] == STEPS and outputs["resumed_from_step"] in range(5, STEPS, 5), "\n".join(lines)
    first = outputs["first_batch_checksums"]
    assert len(first) == 2 and first[0] != first[1]  # each node's worker read its own shard
    # Everything the stage wrote is an object on the S3 server, nothing a local file.
    assert stage.output_uri.startswith(f"{workspace}/pretrain-") and outputs["motionnet"].startswith(stage.output_uri)
    objects = storage.list_uris(stage.output_uri)
    final_state = storage.join(stage.output_uri, "ray", f"pretrain_motionnet-{stage.spec_hash}",
                               f"step_{STEPS:09d}", "state.pt")
    assert {outputs["motionnet"], final_state, storage.join(stage.output_uri, "_SUCCESS")} <= set(objects)
    assert storage.size(outputs["motionnet"]) > 0 and storage.size(final_state) > 0
    assert list(tmp_path.iterdir()) == []
    # The runs, logged over HTTP by the driver and by rank 0 on either node, read back through the server.
    assert result.tracking_uri == tracking_server
    client = MlflowClient(tracking_server)
    run = client.get_run(stage.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == result.run_id
    assert run.data.tags["h2s.resumed_from_step"] == str(outputs["resumed_from_step"])
    steps = [m.step for m in client.get_metric_history(stage.run_id, "loss/total")]
    assert max(steps) == STEPS
    assert client.get_run(result.run_id).info.status == "FINISHED"


@contextlib.contextmanager
def _node_env():
    """The environment a node of the cluster starts with: this process's, less what ray_env
    forwards (the S3 endpoint and region, the MLflow server). A real cluster's nodes have
    their own credentials but not a driver's endpoint; its workers get it from the job."""
    from h2s_dist.ray_env import FORWARDED_ENV

    saved = {name: os.environ.pop(name) for name in FORWARDED_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _registered_checkpoint(workspace: str) -> bool:
    """Whether Ray Train's controller has recorded a checkpoint (its manager snapshot, an S3
    object under the workspace, names one)."""
    from h2s_dist.data import storage

    for snapshot in storage.list_uris(workspace, suffix="checkpoint_manager_snapshot.json"):
        try:
            if "step_" in storage.read_bytes(snapshot).decode():
                return True
        except FileNotFoundError:  # replaced between the listing and the read: look again
            pass
    return False
