"""Storage fixtures: a real S3 server (rclone) on loopback and a per-test S3 prefix.

    def test_x(s3_env): uri = storage.join(s3_env, "a.bin")   # s3://h2s-test/<test>-<rand>
    def test_y(s3_server): boto3.client("s3", endpoint_url=s3_server.endpoint_url, ...)

`s3_server` is session-scoped (one rclone for the whole run); skips when rclone is missing.
`s3_env` points the environment (storage module, boto3, child processes) at it for one test.
"""

from __future__ import annotations

import os
import re
import secrets

import pytest

S3_TEST_BUCKET = "h2s-test"

# Variables from the outer shell that would redirect or re-sign requests meant for the test server.
_OUTER_AWS_VARS = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL",
                   "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running LocalS3Server over a temp folder, with bucket `h2s-test`."""
    from h2s_dist.data.s3server import LocalS3Server, find_rclone

    try:
        find_rclone()
    except FileNotFoundError as exc:
        pytest.skip(f"no local S3 server: {exc}")
    with LocalS3Server(tmp_path_factory.mktemp("s3-root")) as server:
        server.create_bucket(S3_TEST_BUCKET)
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch, request) -> str:
    """The env vars set for `s3_server`; yields a fresh prefix s3://h2s-test/<test-name>-<rand>."""
    for name in _OUTER_AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):  # ignore ~/.aws
        monkeypatch.setenv(name, os.devnull)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40]
    yield f"s3://{S3_TEST_BUCKET}/{name}-{secrets.token_hex(3)}"
