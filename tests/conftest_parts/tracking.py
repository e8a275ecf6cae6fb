"""MLflow fixtures: one sqlite tracking store per test session (creating one costs ~8 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """A real MLflow sqlite store in a temp folder, its tables already created."""
    from h2s_dist.tracking import ensure_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    ensure_experiment(uri, "tests")
    return uri


@pytest.fixture
def stage_run(tracking_uri):
    """make(name) -> Tracking for a fresh child run under one parent run of this test."""
    from h2s_dist.tracking import MlflowTracker
    from h2s_dist.train.launch import Tracking

    parent = MlflowTracker.start(tracking_uri, "tests", run_name="test-parent")

    def make(name: str) -> Tracking:
        child = MlflowTracker.start(tracking_uri, "tests", run_name=name, parent_run_id=parent.run_id)
        return Tracking(tracking_uri, child.run_id)

    return make


@pytest.fixture(scope="session")
def tracking_server(tracking_uri, tmp_path_factory):
    """http://127.0.0.1:PORT: MLflow's tracking server over the session store.

    MLflow's own server app (the handlers and JSON `mlflow server` serves) on a loopback port,
    served from a thread of this process: a `mlflow server` process takes ~30 s to answer on
    2 cores, this ~7 s once mlflow is imported."""
    import threading

    from werkzeug.serving import make_server

    with pytest.MonkeyPatch.context() as patch:
        # What `mlflow server` hands its workers: the store, the artifact root. Set before the
        # app is imported, which then also installs the server's security middleware.
        patch.setenv("_MLFLOW_SERVER_FILE_STORE", tracking_uri)
        patch.setenv("_MLFLOW_SERVER_ARTIFACT_ROOT", str(tmp_path_factory.mktemp("server-artifacts")))
        from mlflow.server import app

        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="mlflow-server", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(timeout=10)
