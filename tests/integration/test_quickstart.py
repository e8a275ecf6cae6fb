"""jobs/quickstart.yaml itself, end to end, with its counts shrunk by `--set` overrides
(the same stages and code path as `make demo`, a few steps each)."""

from __future__ import annotations

import pathlib

import pytest

pytestmark = pytest.mark.integration

QUICKSTART = pathlib.Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml"
SMALL = [
    "stages.data.synthetic.num_videos=36",  # groups of 9; every 4th group is the test side
    "stages.data.synthetic.num_frames=14",
    "stages.pretrain.loop={max_steps: 4, log_every_steps: 2, picture_every_steps: 4, checkpoint_every_steps: 4}",
    "stages.tune.num_samples=2",
    "stages.tune.trial.loop={max_steps: 4, log_every_steps: 2, picture_every_steps: 4, checkpoint_every_steps: 4}",
    "stages.tune.asha={grace_period_steps: 2, reduction_factor: 2}",
    "stages.finetune.loop={max_steps: 3, grad_accum_steps: 1, log_every_steps: 1, checkpoint_every_steps: 3}",
    "stages.spatial.loop={max_steps: 3, log_every_steps: 1, checkpoint_every_steps: 3}",
    "stages.temporal_tvl1.loop={max_steps: 3, grad_accum_steps: 1, log_every_steps: 1, checkpoint_every_steps: 3}",
    "stages.evaluate.num_windows=1",
    "stages.evaluate.tvl1_timed_videos=1",
]


def test_quickstart_runs_every_stage_and_scores_every_stream(tmp_path, tracking_uri):
    import torch
    from mlflow.tracking import MlflowClient

    from h2s_dist import config as cfg
    from h2s_dist.pipeline import runner

    torch.set_num_threads(1)
    overrides = [f"workspace={tmp_path / 'ws'}", f"tracking_uri={tracking_uri}", *SMALL]
    job = cfg.load_job(QUICKSTART, overrides)
    printed: list[str] = []
    result = runner.run_job(job, echo=lambda line: (print(line), printed.append(line)))

    client = MlflowClient(tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    children = client.search_runs(
        [client.get_run(result.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    kinds = {run.data.tags["h2s.stage"]: run for run in children}
    assert set(kinds) == {entry.name for entry in job.stages}
    assert all(run.info.status == "FINISHED" for run in kinds.values())
    metrics = kinds["evaluate"].data.metrics
    for stream in ("spatial", "stacked", "tvl1", "hidden_two_stream", "two_stream_tvl1"):
        assert f"accuracy/{stream}/top1" in metrics
    assert metrics["fps/tvl1_two_stage"] > 0 and metrics["fps/stacked"] > 0
    assert kinds["pretrain"].data.params["scaling.num_workers"] == "2", "the demo pretrains on 2 Ray Train workers"
    table = next(line for line in printed if line.startswith("[h2s] evaluate"))
    assert "Hidden two-stream" in table and "x (paper, on a GPU" in table, table
    assert any("h2s predict VIDEO" in line for line in printed)
    pictures = client.list_artifacts(kinds["pretrain"].info.run_id, "flows")
    assert pictures, "the pretraining run has no flow pictures"
