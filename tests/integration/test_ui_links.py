"""`h2s ui` on a real MLflow store: experiments are tagged as model training, and the links
point at the newest job's experiment and its stage runs in the model-training view."""

from __future__ import annotations


def test_experiments_are_tagged_as_model_training(tracking_uri):
    from mlflow.tracking import MlflowClient

    from h2s_dist.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, ensure_experiment

    client = MlflowClient(tracking_uri)
    fresh = ensure_experiment(tracking_uri, "ui-kind-fresh")
    assert client.get_experiment(fresh).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    old = client.create_experiment("ui-kind-untagged")  # made before the tag existed
    assert ensure_experiment(tracking_uri, "ui-kind-untagged") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_ui_links_open_the_newest_jobs_runs(tracking_uri):
    from h2s_dist.cli import ui_links
    from h2s_dist.tracking import MlflowTracker

    older = MlflowTracker.start(tracking_uri, "ui-links", run_name="older", tags={"h2s.run_type": "job"})
    older.close("FINISHED")
    job = MlflowTracker.start(tracking_uri, "ui-links", run_name="newest", tags={"h2s.run_type": "job"})
    MlflowTracker.start(tracking_uri, "ui-links", run_name="pretrain", parent_run_id=job.run_id).close("FINISHED")
    job.close("FINISHED")
    experiment_id = job.client.get_run(job.run_id).info.experiment_id

    (label, runs), (_, stages), (_, charts) = ui_links(tracking_uri, "http://127.0.0.1:5000")
    assert "'newest'" in label
    assert runs == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    assert f"'{job.run_id}'" in stages and "workflowType=machine_learning" in stages
    assert charts.endswith("compareRunsMode=CHART")
