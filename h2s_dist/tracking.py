"""Experiment tracking: an MLflow tracker for the writing rank, a do-nothing one elsewhere.

Every training rank gets a tracker with the same methods; only rank 0 gets a real one
(STYLE habit 6), so the loop never branches on rank to log. The MLflow tracker talks to
one run through `MlflowClient` with an explicit run id: no global "active run", so the
pipeline can own parent runs while stages log into their child runs.

Tracking URIs: a local sqlite store (`sqlite:///.h2s/mlflow.db`, the embedded default)
or a tracking server (`http://127.0.0.1:5000`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where images are logged: `h2s runs` only resolves URIs here
    import numpy as np

DEFAULT_TRACKING_URI = "sqlite:///.h2s/mlflow.db"
DEFAULT_EXPERIMENT = "h2s"
# Parameter names that may carry credentials are never logged.
_SECRET_WORDS = ("secret", "password", "token", "access_key", "credential", "session_key")
_MAX_PARAM_CHARS = 6000
# MLflow 3's UI shows an experiment either as GenAI (traces overview, assistant) or as model
# training (runs table, metric charts). MLflow 3.17 picks the view from the `workflowType` URL
# parameter, else the browser's last choice (localStorage "mlflow.workflowType", default
# "genai"): `ui_runs_url` puts it in every link `h2s ui` prints. Versions before the global
# toggle read the experiment tag instead, so every experiment also carries it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
UI_WORKFLOW_TYPE = "machine_learning"


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": "0.001"}; secrets dropped, long values cut."""
    flat: dict[str, str] = {}
    for name, value in params.items():
        key = f"{prefix}{name}"
        if any(word in key.lower() for word in _SECRET_WORDS):
            continue
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{key}."))
        else:
            flat[key] = str(value)[:_MAX_PARAM_CHARS]
    return flat


def resolve_tracking_uri(uri: str | None) -> str:
    """The URI to use: the argument, else $MLFLOW_TRACKING_URI, else the local sqlite store.

    A relative sqlite path is made absolute so Ray workers, whose working directory differs
    from the driver's, write to the same database.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = pathlib.Path(uri[len("sqlite:///"):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    return uri


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the database (MLflow's default is ./mlruns of
    whatever directory the process happens to run in)."""
    if tracking_uri.startswith("sqlite:///"):
        db = pathlib.Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """Create the experiment if needed, tagged as model training (see EXPERIMENT_KIND_TAG),
    and return its id. An experiment made before the tag existed gets it here."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in found.tags:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_root(tracking_uri),
                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    except Exception:  # another process created it between the two calls
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def ui_runs_url(base_url: str, experiment_id: str, search_filter: str | None = None, charts: bool = False) -> str:
    """The MLflow UI's runs page of one experiment in the model-training view: the runs table
    (parent runs with their children nested), or only the runs matching `search_filter`
    (shown flat), or their metric charts (`charts`)."""
    from urllib.parse import urlencode

    query = {"workflowType": UI_WORKFLOW_TYPE}
    if search_filter:
        query["searchFilter"] = search_filter
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=_quote)}"


def ui_run_url(base_url: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """The MLflow UI's page of one run (tab "" = overview, "model-metrics" = charts,
    "artifacts/<path>" = one artifact), in the model-training view."""
    path = f"/{tab}" if tab else ""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{path}?workflowType={UI_WORKFLOW_TYPE}"


def _quote(text: str, safe: str = "", encoding: str | None = None, errors: str | None = None) -> str:
    from urllib.parse import quote

    return quote(text, safe="'", encoding=encoding, errors=errors)


class NullTracker:
    """The tracker of every non-writing rank: same methods, does nothing."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        pass

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        pass

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        pass

    def log_state_dict(self, state_dict: Mapping[str, Any], name: str, register_as: str | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(NullTracker):
    """Logs into one MLflow run, given by id (created by the caller or by `start`)."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self._last_steps: dict[str, int | None] | None = None  # see _last_step

    @classmethod
    def start(
        cls,
        tracking_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MlflowTracker:
        """Create a new run (a child of `parent_run_id` when given) and track it."""
        from mlflow.tracking import MlflowClient

        uri = resolve_tracking_uri(tracking_uri)
        experiment_id = ensure_experiment(uri, experiment)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = MlflowClient(uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(uri, run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        existing = self.client.get_run(self.run_id).data.params
        # A resumed run logs the same params again; MLflow refuses to change a param.
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for chunk in _chunks(new, 100):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [
            Metric(k, float(v), now, step) for k, v in metrics.items()
            if v is not None and math.isfinite(float(v)) and step > self._last_step(k)
        ]
        for chunk in _chunks(batch, 1000):
            self.client.log_batch(self.run_id, metrics=chunk)

    def _last_step(self, key: str) -> int:
        """The highest step `key` had in this run before this tracker first logged (-1: none).

        A run resumed in place (a restarted Ray Train worker logs into the same run) redoes
        the steps since its last checkpoint; their points are already in the run, so they are
        not logged a second time and every curve keeps one point per step. A fresh run costs
        one `get_run`; a resumed one also one history read per metric it had."""
        if self._last_steps is None:
            self._last_steps = dict.fromkeys(self.client.get_run(self.run_id).data.metrics)
        if key not in self._last_steps:
            return -1
        if self._last_steps[key] is None:
            self._last_steps[key] = max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)
        return self._last_steps[key]

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """image (H, W, 3) uint8 -> a PNG artifact at `artifact_file` (e.g. "flows/step_000100.png")."""
        import numpy as np
        from PIL import Image

        with _tmp_path(artifact_file) as path:
            Image.fromarray(np.ascontiguousarray(image)).save(path)
            self.client.log_artifact(self.run_id, str(path), _folder(artifact_file))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact; the figure is closed afterwards."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            plt.close(figure)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.log_bytes(json.dumps(data, indent=2, default=str).encode(), artifact_file)

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        """A table as MLflow's JSON table artifact (shown as a table in the UI)."""
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(dict(columns)), artifact_file=artifact_file)

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """`data` as the artifact `artifact_file` (e.g. "scores.npz", "weights/spatial.pt")."""
        with _tmp_path(artifact_file) as path:
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), _folder(artifact_file))

    def log_state_dict(self, state_dict: Mapping[str, Any], name: str, register_as: str | None = None) -> None:
        """Final weights as `weights/<name>.pt`, registered as a model version when asked.

        The registry entry points at the run's artifact, so a user can fetch weights by a
        stable name (`models:/motionnet/3`) without knowing the run.
        """
        import torch

        buffer = io.BytesIO()
        torch.save(dict(state_dict), buffer)
        self.log_bytes(buffer.getvalue(), f"weights/{name}.pt")
        if register_as:
            self._register(register_as, f"weights/{name}.pt")

    def _register(self, model_name: str, artifact_file: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model_name)
        except MlflowException:
            pass  # it exists already: add a version
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_file}"
        self.client.create_model_version(model_name, source=source, run_id=self.run_id)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _folder(artifact_file: str) -> str | None:
    parent = str(pathlib.PurePosixPath(artifact_file).parent)
    return None if parent == "." else parent


@contextlib.contextmanager
def _tmp_path(artifact_file: str) -> Iterator[pathlib.Path]:
    """A temporary file named like the artifact's basename (MLflow keeps the basename)."""
    with tempfile.TemporaryDirectory(prefix="h2s-artifact-") as folder:
        yield pathlib.Path(folder) / pathlib.PurePosixPath(artifact_file).name
