"""The environment a job's Ray processes on other nodes share with the process that starts it.

A Ray worker process inherits the environment of its node's raylet, not that of the driver:
on a cluster, the driver's S3 endpoint (`H2S_S3_ENDPOINT_URL`) or MLflow server
(`MLFLOW_TRACKING_URI`) would otherwise be unknown to the Ray Train workers that write the
checkpoints, the outputs and the metrics, and they would write to AWS's S3 (or nowhere)
while the driver reads the loopback or MinIO one. So the names below travel in the job's
runtime_env (`env_vars`), which every task and actor of the job inherits:

    runtime_env = {"env_vars": forwarded_env()}         # h2s submit; ensure_ray(address)

Never credentials: a job's runtime_env is shown by the dashboard and `ray job list`; the
cluster's nodes get their own (a Kubernetes secret, an instance role). Imports nothing heavy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

# Forwarded when set here. Not RAY_AUTH_MODE: the job runs under the cluster's own mode and
# token, whatever this shell has.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
    "H2S_S3_ENDPOINT_URL", "AWS_PROFILE", "H2S_PROGRESS", "H2S_PROGRESS_EVERY_S",
)
# Never shipped, even when asked for by name.
NEVER_FORWARDED = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Set by Ray in the driver of a job submitted through the Jobs API: its runtime_env is already
# the job's (h2s submit forwarded the names above), and Ray refuses a ray.init runtime_env
# that sets the same variables again.
SUBMITTED_JOB_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def forwarded_env(extra: Iterable[str] = (), environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """{name: value} of FORWARDED_ENV plus `extra` names that are set in `environ`."""
    return {name: environ[name] for name in (*FORWARDED_ENV, *extra) if name in environ}


def connect_runtime_env(environ: Mapping[str, str] = os.environ) -> dict | None:
    """The runtime_env for `ray.init(address=...)` to an existing cluster: the forwarded
    variables, or None inside a submitted job (its runtime_env already carries them) or when
    none is set."""
    if SUBMITTED_JOB_VAR in environ:
        return None
    env = forwarded_env(environ=environ)
    return {"env_vars": env} if env else None
