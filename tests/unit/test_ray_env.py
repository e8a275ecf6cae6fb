"""What a job's Ray workers on other nodes get of this process's environment: the S3 endpoint,
region and MLflow server, never a secret, both for `h2s submit` and for a driver that connects
to a cluster by address (ensure_ray); nothing again inside a submitted job."""

from __future__ import annotations

import sys
import types

import pytest

from h2s_dist import cli, tasks
from h2s_dist.ray_env import NEVER_FORWARDED, SUBMITTED_JOB_VAR, connect_runtime_env, forwarded_env

WHERE = {"H2S_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
         "AWS_REGION": "us-east-1", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
SECRETS = {"AWS_ACCESS_KEY_ID": "h2s", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok",
           "RAY_AUTH_TOKEN": "0" * 64}


def test_the_endpoint_region_and_tracking_server_are_forwarded_and_no_secret_is():
    env = forwarded_env(environ={**WHERE, **SECRETS, "HOME": "/root"})
    assert env == WHERE
    assert not set(env) & set(NEVER_FORWARDED)


def test_a_driver_connecting_by_address_hands_its_workers_the_forwarded_env():
    assert connect_runtime_env({**WHERE, **SECRETS}) == {"env_vars": WHERE}
    assert connect_runtime_env({"HOME": "/root"}) is None  # nothing to hand: no runtime_env at all


def test_inside_a_submitted_job_nothing_is_forwarded_again():
    # Ray refuses a ray.init runtime_env that sets a variable the submitted job's already sets.
    assert connect_runtime_env({**WHERE, SUBMITTED_JOB_VAR: "{}"}) is None


def test_submit_ships_the_same_names(monkeypatch):
    for name, value in {**WHERE, **SECRETS}.items():
        monkeypatch.setenv(name, value)
    _, runtime_env = cli.submission("jobs/quickstart.yaml", [], ["AWS_ACCESS_KEY_ID"], False, [])
    assert runtime_env["env_vars"] == {**WHERE, "AWS_ACCESS_KEY_ID": "h2s"}  # --env adds a name


@pytest.mark.parametrize(("address", "expected"), [
    ("ray://head:10001", {"env_vars": WHERE}),   # a cluster whose nodes were started elsewhere
    (None, None),                                 # an embedded Ray: its workers inherit this env
])
def test_ensure_ray_passes_the_runtime_env_only_when_connecting(monkeypatch, address, expected):
    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(SUBMITTED_JOB_VAR, raising=False)
    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_PROFILE", "H2S_PROGRESS", "H2S_PROGRESS_EVERY_S"):
        monkeypatch.delenv(name, raising=False)
    for name, value in WHERE.items():
        monkeypatch.setenv(name, value)
    tasks.ensure_ray(address)
    (kwargs,) = calls
    assert kwargs.get("runtime_env") == expected
