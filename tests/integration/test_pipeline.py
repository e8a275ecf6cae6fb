"""The runner end to end, in this process: ingest -> pretrain -> finetune -> evaluate on tiny
settings, tracked in a real (temporary) sqlite MLflow store.

Properties: one parent run with a finished child per stage; a second run reuses every stage;
a stage interrupted after its first checkpoint resumes from it. Failure injection (a testing
hook, not a feature): `LocalSession.report` is wrapped to raise right after it has written
the checkpoint of step N, as a crash at that point would.
"""

from __future__ import annotations

import json
import pathlib
import time

import pytest

pytestmark = pytest.mark.integration

from h2s_dist import config as cfg  # noqa: E402
from h2s_dist.pipeline import runner  # noqa: E402

CLIPS = {
    "dataset": "${data.dataset}", "split": 1, "subset": "train", "clip_len_frames": 11, "crop_size": 64,
    "batch_size": 2, "loader_workers": 0, "shuffle_buffer": 4, "epoch_length_samples": 16,
}


def tiny_job(workspace: str, tracking_uri: str) -> dict:
    return {
        "name": "pipeline_test",
        "workspace": workspace,
        "tracking_uri": tracking_uri,
        "stages": [
            {"name": "data", "kind": "ingest", "source": "synthetic", "num_tasks": 0,
             "synthetic": {"num_videos": 36, "num_frames": 12, "height": 64, "width": 80}},
            {"name": "pretrain", "kind": "pretrain_motionnet", "needs": ["data"], "motionnet": {"flavour": "tiny"},
             "data": CLIPS, "optim": {"name": "adam", "lr": 1e-3},
             "loop": {"max_steps": 4, "log_every_steps": 2, "picture_every_steps": 100, "checkpoint_every_steps": 2}},
            {"name": "finetune", "kind": "finetune_stacked", "needs": ["data", "pretrain"],
             "motionnet": {"flavour": "tiny"}, "motionnet_weights": "${stages.pretrain.outputs.motionnet}",
             "vgg_flavour": "tiny", "data": CLIPS, "optim": {"name": "sgd", "lr": 1e-2},
             "loop": {"max_steps": 2, "log_every_steps": 1, "picture_every_steps": 100, "checkpoint_every_steps": 2}},
            {"name": "evaluate", "kind": "evaluate", "needs": ["data", "finetune"], "dataset": "${data.dataset}",
             "clip_len_frames": 11, "crop_size": 64, "num_windows": 1, "num_crops": 1, "motionnet": {"flavour": "tiny"},
             "vgg_flavour": "tiny", "stacked_weights": "${finetune.stacked_temporal}", "loader_workers": 0},
        ],
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """One workspace and one sqlite store for the module (creating the store takes seconds)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pipeline")
    return {"workspace": str(root / "ws"), "tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "lines": []}


@pytest.fixture(scope="module")
def first_run(setup):
    job = cfg.validate_job(tiny_job(setup["workspace"], setup["tracking_uri"]))
    started = time.perf_counter()
    result = runner.run_job(job, echo=setup["lines"].append)
    return result, time.perf_counter() - started


def _client(setup):
    from mlflow.tracking import MlflowClient

    return MlflowClient(setup["tracking_uri"])


def _children(client, parent_id: str):
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_job_runs_end_to_end_with_one_parent_and_a_finished_child_per_stage(setup, first_run):
    result, seconds = first_run
    print(f"first run: {seconds:.1f}s", *setup["lines"], sep="\n")
    assert list(result.stages) == ["data", "pretrain", "finetune", "evaluate"]
    assert not any(s.reused for s in result.stages.values())
    assert result.stages["pretrain"].outputs["steps"] == 4
    assert result.stages["finetune"].outputs["steps"] == 2
    assert "eval/videos" in result.stages["evaluate"].outputs["metrics"]

    client = _client(setup)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["h2s.job"] == "pipeline_test" and parent.data.tags["h2s.spec_hash"]
    assert parent.data.tags["h2s.code_version"]
    children = {c.data.tags["h2s.stage"]: c for c in _children(client, result.run_id)}
    assert set(children) == set(result.stages)
    for name, child in children.items():
        stage = result.stages[name]
        assert child.info.status == "FINISHED"
        assert child.data.tags["h2s.stage_kind"] == stage.kind
        assert child.data.tags["h2s.spec_hash"] == stage.spec_hash
        assert child.data.tags["h2s.reused"] == "false"
        assert stage.output_uri.endswith(f"/{name}-{stage.spec_hash}")
    # Lineage: the finetune stage's inputs are the dataset and the pretrained weights.
    inputs = children["finetune"].data.tags["h2s.inputs"]
    assert result.stages["pretrain"].outputs["motionnet"] in inputs and result.stages["data"].outputs["dataset"] in inputs
    assert "loss/total" in children["pretrain"].data.metrics


def test_every_stage_folder_holds_the_resolved_spec_it_ran_under(first_run):
    result, _ = first_run
    for stage in result.stages.values():
        spec = json.loads((pathlib.Path(stage.output_uri) / runner.SPEC_FILE).read_text())
        assert spec["kind"] == stage.kind
    evaluate = json.loads((pathlib.Path(result.stages["evaluate"].output_uri) / runner.SPEC_FILE).read_text())
    assert evaluate["stacked_weights"] == result.stages["finetune"].outputs["stacked_temporal"]


def test_predict_reads_the_finished_job_by_workspace_and_by_run_id(setup, first_run, shared_data, capsys):
    from h2s_dist import cli

    result, _ = first_run
    clip = str(shared_data / "videos" / "UCF-101_Rowing_g16_c03.avi")
    evaluate_run = result.stages["evaluate"].run_id
    for model in (setup["workspace"], evaluate_run, result.run_id):
        assert cli.main(["predict", clip, "--model", model, "--fast", "--tracking-uri", setup["tracking_uri"]]) == 0
        out, err = capsys.readouterr()
        assert result.stages["evaluate"].output_uri in err  # the stage it read
        assert "  5. " in out and "fps" in out


def test_second_run_reuses_every_stage(setup, first_run):
    first, _ = first_run
    job = cfg.validate_job(tiny_job(setup["workspace"], setup["tracking_uri"]))
    started = time.perf_counter()
    again = runner.run_job(job, echo=setup["lines"].append)
    seconds = time.perf_counter() - started
    print(f"second run: {seconds:.1f}s")
    assert all(s.reused for s in again.stages.values())
    assert seconds < 30
    assert again.run_id != first.run_id
    client = _client(setup)
    for child in _children(client, again.run_id):
        name = child.data.tags["h2s.stage"]
        assert child.info.status == "FINISHED" and child.data.tags["h2s.reused"] == "true"
        assert child.data.tags["h2s.reused_from_run_id"] == first.stages[name].run_id
        assert again.stages[name].outputs == first.stages[name].outputs


def test_interrupted_stage_resumes_from_its_checkpoint(setup, first_run, monkeypatch):
    from h2s_dist.train.session import LocalSession

    # Another step budget: a new spec hash, so a new output folder with no checkpoints yet.
    data = tiny_job(setup["workspace"], setup["tracking_uri"])
    data["stages"][1]["loop"]["max_steps"] = 6
    job = cfg.validate_job(data)
    original = LocalSession.report

    def crash_after_first_checkpoint(self, metrics, state, step):
        original(self, metrics, state, step)
        if state is not None and step == 2:
            raise RuntimeError("injected crash after the checkpoint of step 2")

    monkeypatch.setattr(LocalSession, "report", crash_after_first_checkpoint)
    with pytest.raises(runner.StageFailedError, match="stage 'pretrain'.*injected crash") as info:
        runner.run_job(job, only=["pretrain"], echo=setup["lines"].append)
    assert "rerun the same command" in str(info.value)
    client = _client(setup)
    failed_parent = client.search_runs(
        [client.get_experiment_by_name("pipeline_test").experiment_id],
        filter_string="tags.`h2s.run_type` = 'job'", order_by=["attributes.start_time DESC"], max_results=1,
    )[0]
    assert failed_parent.info.status == "FAILED"
    statuses = {c.data.tags["h2s.stage"]: c.info.status for c in _children(client, failed_parent.info.run_id)}
    assert statuses == {"data": "FINISHED", "pretrain": "FAILED"}

    monkeypatch.setattr(LocalSession, "report", original)
    resumed = runner.run_job(job, only=["pretrain"], echo=setup["lines"].append)
    pretrain = resumed.stages["pretrain"]
    assert resumed.stages["data"].reused and not pretrain.reused
    assert pretrain.outputs["resumed_from_step"] == 2 and pretrain.outputs["steps"] == 6
    child = client.get_run(pretrain.run_id)
    assert child.data.tags["h2s.resumed_from_step"] == "2"


class _Killed(BaseException):
    """Stands in for SIGKILL: no handler of the runner catches it, so nothing gets closed."""


def test_runs_of_a_killed_execution_are_closed_killed_when_its_stage_runs_again(setup, first_run, monkeypatch):
    data = tiny_job(setup["workspace"], setup["tracking_uri"])
    data["stages"][1]["loop"]["max_steps"] = 5  # a new spec hash: a folder of its own
    job = cfg.validate_job(data)
    real_launch = runner.launch_stage

    def die(*args, **kwargs):
        raise _Killed()

    monkeypatch.setattr(runner, "launch_stage", die)
    lines: list[str] = []
    with pytest.raises(_Killed):
        runner.run_job(job, only=["pretrain"], echo=lines.append)
    client = _client(setup)
    job_run = client.search_runs(
        [client.get_experiment_by_name("pipeline_test").experiment_id],
        filter_string="tags.`h2s.run_type` = 'job'", order_by=["attributes.start_time DESC"], max_results=1,
    )[0]
    # A killed process does not run its `finally` either: put the job run back as it would be left.
    client.update_run(job_run.info.run_id, status="RUNNING")
    dead_stage = next(c for c in _children(client, job_run.info.run_id) if c.data.tags["h2s.stage"] == "pretrain")
    assert dead_stage.info.status == "RUNNING"

    monkeypatch.setattr(runner, "launch_stage", real_launch)
    resumed = runner.run_job(job, only=["pretrain"], echo=lines.append)
    assert client.get_run(dead_stage.info.run_id).info.status == "KILLED"
    assert client.get_run(job_run.info.run_id).info.status == "KILLED"
    new_stage = client.get_run(resumed.stages["pretrain"].run_id)
    assert new_stage.info.status == "FINISHED"
    assert new_stage.data.tags["h2s.resumes_run_id"] == dead_stage.info.run_id
    assert any(f"resuming killed run {dead_stage.info.run_id}" in line for line in lines)
    assert not (pathlib.Path(resumed.stages["pretrain"].output_uri.removeprefix("file://")) / runner.RUNNING_FILE).exists()


def test_only_refuses_a_stage_whose_needs_have_not_finished(setup, first_run):
    data = tiny_job(setup["workspace"], setup["tracking_uri"])
    data["stages"][1]["loop"]["max_steps"] = 3  # pretrain never ran with this spec
    job = cfg.validate_job(data)
    with pytest.raises(runner.StageFailedError, match="stage 'pretrain' is needed by --only finetune"):
        runner.run_job(job, only=["finetune"], echo=lambda line: None)


def test_runs_table_lists_the_job_and_its_stages(setup, first_run):
    from h2s_dist.pipeline.report import job_runs_table

    table = job_runs_table(setup["tracking_uri"], limit=10)
    assert "pipeline_test" in table and "pretrain_motionnet" in table and "evaluate" in table


def test_fresh_reruns_a_finished_stage(setup, first_run):
    first, _ = first_run
    job = cfg.validate_job(tiny_job(setup["workspace"], setup["tracking_uri"]))
    again = runner.run_job(job, fresh=True, only=["data"], echo=lambda line: None)
    data = again.stages["data"]
    assert not data.reused and data.output_uri == first.stages["data"].output_uri
    assert runner.read_success(data.output_uri)["run_id"] == data.run_id != first.stages["data"].run_id
