"""How h2s picks Ray's auth mode, what it refuses to ship with a job, and the environment of
`h2s tracking-server --basic-auth`."""

from __future__ import annotations

import configparser

import pytest

from h2s_dist import cli
from h2s_dist.ray_auth import default_auth_mode, refused_message


@pytest.mark.parametrize(("environ", "mode"), [
    ({}, "disabled"),                                           # an embedded local Ray
    ({"RAY_AUTH_TOKEN": "t"}, "token"),                         # a given token implies token mode
    ({"RAY_AUTH_TOKEN_PATH": "/run/token"}, "token"),
    ({"RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "disabled"}, "disabled"),  # a mode set by the user wins
    ({"RAY_AUTH_MODE": "token"}, "token"),
])
def test_auth_mode_is_token_when_a_token_is_given_and_an_explicit_mode_wins(environ, mode):
    assert default_auth_mode(environ) == mode and environ["RAY_AUTH_MODE"] == mode


def test_refusal_says_where_the_token_comes_from():
    message = refused_message("http://head:8265", "Authentication required: Unauthorized\n\nmore")
    assert "http://head:8265" in message and "RAY_AUTH_TOKEN" in message and "h2s-ray-token" in message


@pytest.mark.parametrize("name", ["RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY"])
def test_submission_refuses_to_ship_a_secret(monkeypatch, name):
    monkeypatch.setenv(name, "secret")
    with pytest.raises(ValueError, match=f"--env {name}"):
        cli.submission("jobs/quickstart.yaml", [], [name], False, [])


def test_submission_leaves_the_auth_mode_to_the_cluster(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _, runtime_env = cli.submission("jobs/quickstart.yaml", [], [], False, [])
    assert "RAY_AUTH_MODE" not in runtime_env["env_vars"]


@pytest.mark.parametrize("environ", [{}, {"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}])
def test_basic_auth_needs_an_admin_password_mlflow_accepts(tmp_path, environ):
    with pytest.raises(ValueError, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        cli.basic_auth_env(environ, str(tmp_path / "auth.db"))


def test_basic_auth_env_names_the_user_store_and_a_csrf_key(tmp_path):
    env = cli.basic_auth_env({"MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-password", "MLFLOW_AUTH_ADMIN_USERNAME": "root"},
                             str(tmp_path / "auth" / "users.db"))
    ini = configparser.ConfigParser()
    ini.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini["mlflow"]["database_uri"] == f"sqlite:///{tmp_path / 'auth' / 'users.db'}"
    assert ini["mlflow"]["admin_username"] == "root" and "admin_password" not in ini["mlflow"]  # from the env only
    assert len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32
