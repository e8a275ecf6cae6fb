"""Weights by registered model version: `models:/NAME/VERSION` loads through mlflow's artifact
download from a real sqlite MLflow store (the HMDB51 job's UCF101 inputs may be such URIs)."""

from __future__ import annotations

import pytest
import torch

from h2s_dist.weights import TRACKING_URI_ENV, load_weights


def test_weights_load_from_a_registered_model_version(tracking_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    from h2s_dist.tracking import MlflowTracker

    torch.manual_seed(0)
    source = torch.nn.Linear(3, 2)
    tracker = MlflowTracker.start(tracking_uri, "tests", run_name="registry")
    tracker.log_state_dict(source.state_dict(), "h2s_registry_test", register_as="h2s_registry_test")
    tracker.close()
    version = max(int(v.version) for v in MlflowClient(tracking_uri).search_model_versions("name='h2s_registry_test'"))

    monkeypatch.setenv(TRACKING_URI_ENV, tracking_uri)
    target = torch.nn.Linear(3, 2)
    assert load_weights(target, f"models:/h2s_registry_test/{version}") == []
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)
    with pytest.raises(Exception, match="h2s_registry_test"):
        load_weights(target, f"models:/h2s_registry_test/{version + 7}")
