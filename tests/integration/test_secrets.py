"""No credential reaches a job's record. A job runs through the real runner with an S3
workspace on a loopback S3 server that checks distinctive AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY values (so every stage really signs requests with them); then each
MLflow param, tag and metric name, each artefact, each object the job wrote to the bucket and
each line it printed is searched for those values (raw, and as base64 or URL-quoted, the
shapes a value takes inside JSON, headers or URIs). None may hold them.

~30 s: an rclone server of its own (~1 s), ingest of a small synthetic set, 2 pretraining steps.
"""

from __future__ import annotations

import base64
import pathlib
import secrets
import urllib.parse

import pytest

pytestmark = pytest.mark.integration

CLIPS = {
    "dataset": "${data.dataset}", "split": 1, "subset": "train", "clip_len_frames": 11, "crop_size": 64,
    "batch_size": 2, "loader_workers": 0, "shuffle_buffer": 4, "epoch_length_samples": 8,
}


def _shapes(value: str) -> set[bytes]:
    """The forms a leaked value would take in a file: itself, base64, URL-quoted."""
    raw = value.encode()
    return {raw, base64.b64encode(raw), urllib.parse.quote(value, safe="").encode()}


def _leaks(blob: bytes, where: str, needles: dict[str, set[bytes]]) -> list[str]:
    return [f"{name} in {where}" for name, shapes in needles.items() if any(shape in blob for shape in shapes)]


@pytest.fixture
def credentialed_s3(tmp_path, monkeypatch):
    """A loopback S3 server whose keys are distinctive values, and the environment pointing at it."""
    from h2s_dist.data.s3server import LocalS3Server, find_rclone

    try:
        find_rclone()
    except FileNotFoundError as exc:
        pytest.skip(f"no local S3 server: {exc}")
    keys = {"AWS_ACCESS_KEY_ID": f"AKIALEAKCHECK{secrets.token_hex(4).upper()}",
            "AWS_SECRET_ACCESS_KEY": f"leakcheck/{secrets.token_hex(16)}+secret"}
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):  # ignore ~/.aws
        monkeypatch.setenv(name, "/dev/null")
    root = tmp_path / "s3"
    with LocalS3Server(root, access_key=keys["AWS_ACCESS_KEY_ID"], secret_key=keys["AWS_SECRET_ACCESS_KEY"]) as server:
        server.create_bucket("leakcheck")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield keys, root


def test_no_aws_credential_reaches_params_tags_artefacts_or_logs(credentialed_s3, tmp_path, capfd):
    import torch
    from mlflow.tracking import MlflowClient

    from h2s_dist import config as cfg
    from h2s_dist.pipeline import runner

    keys, s3_root = credentialed_s3
    torch.set_num_threads(1)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = cfg.validate_job({
        "name": "leakcheck", "workspace": "s3://leakcheck/ws", "tracking_uri": tracking_uri,
        "stages": [
            {"name": "data", "kind": "ingest", "source": "synthetic", "num_tasks": 0,
             "synthetic": {"num_videos": 36, "num_frames": 12, "height": 64, "width": 80}},
            {"name": "pretrain", "kind": "pretrain_motionnet", "needs": ["data"], "motionnet": {"flavour": "tiny"},
             "data": CLIPS, "optim": {"name": "adam", "lr": 1e-3},
             "loop": {"max_steps": 2, "log_every_steps": 1, "picture_every_steps": 2, "checkpoint_every_steps": 2}},
        ],
    })
    lines: list[str] = []
    result = runner.run_job(job, echo=lines.append)
    printed = capfd.readouterr()

    needles = {name: _shapes(value) for name, value in keys.items()}
    assert _leaks(base64.b64encode(keys["AWS_SECRET_ACCESS_KEY"].encode()), "probe", needles)  # the scan can see one
    client = MlflowClient(tracking_uri)
    runs = [client.get_run(result.run_id)]
    runs += client.search_runs([runs[0].info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(runs) == 3 and any(run.data.params for run in runs)
    found: list[str] = []
    artefacts = 0
    for run in runs:
        record = repr((run.data.params, run.data.tags, sorted(run.data.metrics))).encode()
        found += _leaks(record, f"run {run.info.run_name} params/tags/metrics", needles)
        local = pathlib.Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artefacts" / run.info.run_id)))
        for path in (p for p in local.rglob("*") if p.is_file()):
            artefacts += 1
            found += _leaks(path.read_bytes(), f"artefact {path.relative_to(local)}", needles)
    objects = [p for p in (s3_root / "leakcheck").rglob("*") if p.is_file()]
    for path in objects:
        found += _leaks(path.read_bytes(), f"s3 object {path.relative_to(s3_root)}", needles)
    logs = "\n".join([*lines, printed.out, printed.err]).encode()
    found += _leaks(logs, "the job's printed output", needles)

    assert artefacts > 0 and len(objects) > 10, "the scan saw too little to mean anything"
    assert not found, found


def test_tracking_server_with_basic_auth_refuses_requests_without_the_password(tmp_path):
    """`h2s tracking-server --basic-auth`: 401 without credentials or with a wrong password,
    200 for the admin from MLFLOW_AUTH_ADMIN_PASSWORD (~40 s: MLflow's server start-up)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = f"pw-{secrets.token_hex(8)}"
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": password}
    server = subprocess.Popen(
        [sys.executable, "-m", "h2s_dist", "tracking-server", "--basic-auth", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'runs.db'}", "--artifacts-destination", str(tmp_path / "art"),
         "--auth-db", str(tmp_path / "users.db")],
        env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def status(user: str | None = None, pw: str = "") -> int:
        headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()} if user else {}
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, "the tracking server exited"
        assert status() == 401
        assert status("admin", "not-the-password") == 401
        assert status("admin", password) == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
