"""Read job runs from an MLflow tracking server through its REST API, without importing mlflow.

The same searches as run_rows.ClientRuns, as the JSON requests MlflowClient would send:

    POST /api/2.0/mlflow/experiments/search   {"max_results": 1000, "view_type": "ACTIVE_ONLY"}
    GET  /api/2.0/mlflow/experiments/get-by-name?experiment_name=NAME
    POST /api/2.0/mlflow/runs/search          {"experiment_ids": [...], "filter": "...",
                                               "run_view_type": "ACTIVE_ONLY", "order_by": [...],
                                               "max_results": N}

Credentials come from the variables MlflowClient reads: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (basic auth), else MLFLOW_TRACKING_TOKEN (bearer). `rest_readable`
is False when a variable asks for more (TLS options, auth plugins, a workspace): use
run_rows.ClientRuns then.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from h2s_dist.pipeline.run_rows import JOB_RUN_FILTER, SEARCH_MAX_RESULTS, RunRow, stage_runs_filter

# Client settings only MlflowClient implements (custom TLS, auth plugins, SigV4, workspaces).
_CLIENT_ONLY_ENV = (
    "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4", "MLFLOW_WORKSPACE",
)
TIMEOUT_S = 30.0


def rest_readable(tracking_uri: str, environ: Mapping[str, str] = os.environ) -> bool:
    """True for an http(s) URI whose client settings this module covers."""
    return tracking_uri.startswith(("http://", "https://")) and not any(
        environ.get(name, "").strip() not in ("", "false", "False", "0") for name in _CLIENT_ONLY_ENV)


def auth_header(environ: Mapping[str, str] = os.environ) -> str | None:
    """The Authorization header MlflowClient sends for these variables (basic before bearer)."""
    user, password = environ.get("MLFLOW_TRACKING_USERNAME"), environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return "Basic " + base64.standard_b64encode(f"{user}:{password}".encode()).decode()
    token = environ.get("MLFLOW_TRACKING_TOKEN")
    return f"Bearer {token}" if token else None


class RestRuns:
    """The run_rows reader over a tracking server at `tracking_uri` (http://HOST:PORT[/prefix])."""

    def __init__(self, tracking_uri: str):
        self.base = tracking_uri.rstrip("/")

    def request(self, endpoint: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None) -> dict:
        """The JSON answer of `endpoint` (POST with `body`, else GET with `query`); {} for a 404."""
        url = f"{self.base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Content-Type": "application/json"}
        if (auth := auth_header()) is not None:
            headers["Authorization"] = auth
        data = None if body is None else json.dumps(body).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=TIMEOUT_S) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as err:
            if err.code == 404:  # get-by-name of a missing experiment
                return {}
            detail = err.read().decode(errors="replace")[:500]
            raise ValueError(f"the tracking server {self.base} answered {err.code} to {endpoint}: {detail}") from err
        except urllib.error.URLError as err:
            raise ValueError(f"cannot reach the tracking server {self.base} ({err.reason}): is it running? "
                             "(`h2s tracking-server` starts one)") from err

    def experiment_ids(self, name: str | None) -> list[str]:
        if name is not None:
            found = self.request("experiments/get-by-name", query={"experiment_name": name}).get("experiment")
            return [found["experiment_id"]] if found and found.get("lifecycle_stage") == "active" else []
        answer = self.request("experiments/search", {"max_results": SEARCH_MAX_RESULTS, "view_type": "ACTIVE_ONLY"})
        return [e["experiment_id"] for e in answer.get("experiments", [])]

    def job_runs(self, experiment_ids: Sequence[str], limit: int) -> list[RunRow]:
        return self._search(experiment_ids, JOB_RUN_FILTER, "DESC", limit)

    def stage_runs(self, job: RunRow) -> list[RunRow]:
        return self._search([job.experiment_id], stage_runs_filter(job.run_id), "ASC", SEARCH_MAX_RESULTS)

    def _search(self, experiment_ids: Sequence[str], filter_string: str, direction: str, limit: int) -> list[RunRow]:
        if not experiment_ids:
            return []
        answer = self.request("runs/search", {
            "experiment_ids": list(experiment_ids), "filter": filter_string, "run_view_type": "ACTIVE_ONLY",
            "order_by": [f"attributes.start_time {direction}"], "max_results": limit,
        })
        return [run_row(run) for run in answer.get("runs", [])]


def run_row(run: Mapping[str, Any]) -> RunRow:
    """A RunRow from one run of a runs/search answer. Protobuf JSON leaves out empty lists and
    unset fields; int64 fields may come as strings and NaN metric values as "NaN"."""
    info, data = run["info"], run.get("data", {})
    start = info.get("start_time")
    return RunRow(
        run_id=info.get("run_id") or info["run_uuid"], run_name=info.get("run_name"),
        experiment_id=str(info["experiment_id"]), status=info.get("status", "RUNNING"),
        start_time=None if start is None else int(start),
        tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
        metrics={m["key"]: float(m.get("value", 0.0)) for m in data.get("metrics", [])},
    )
