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
