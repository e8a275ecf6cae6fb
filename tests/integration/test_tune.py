"""The `tune` stage on a real local Ray: 4 in-process trials of tiny MotionNet pretraining
under ASHA, each an MLflow child run of the stage's run; the best trial's weights are the
stage's output; running the stage again restores the finished search instead of rerunning it.

One test on purpose: Ray start-up costs ~10-20 s on 2 cores.
"""

from __future__ import annotations

import math
import pathlib
import time

import pytest

pytestmark = pytest.mark.integration


def test_search_picks_best_trial_logs_child_runs_and_restores(local_ray, make_synthetic_dataset, tmp_path, stage_run):
    from mlflow.tracking import MlflowClient

    from h2s_dist.train.launch import launch
    from h2s_dist.specs.driver import TuneSpec

    spec = TuneSpec.model_validate({
        "trial": {
            "kind": "pretrain_motionnet",
            "motionnet": {"flavour": "tiny"},
            "data": {"dataset": make_synthetic_dataset(shard_target_bytes=200_000), "crop_size": 32, "batch_size": 2,
                     "loader_workers": 0, "shuffle_buffer": 4, "epoch_length_samples": 32},
            "optim": {"name": "adam", "weight_decay": 0.0},
            "loop": {"max_steps": 16, "log_every_steps": 4, "picture_every_steps": 100, "checkpoint_every_steps": 8},
        },
        "search_space": {"optim.lr": {"loguniform": [1e-4, 3e-3]}, "loss.smoothness_weight": {"choice": [0.1, 1.0, 10.0]}},
        "asha": {"grace_period_steps": 4, "reduction_factor": 2},
        "num_samples": 4,
        "max_concurrent_trials": 2,
    })
    tracking = stage_run("tune")
    output = tmp_path / "tune"
    started = time.perf_counter()
    outputs = launch("tune", spec, str(output), tracking)
    search_s = time.perf_counter() - started

    assert len(outputs["trials"]) == 4
    best = outputs["trials"][outputs["best_trial"]]
    assert best["finished"] and best["steps"] == 16
    finished = [t for t in outputs["trials"].values() if t["finished"]]
    assert outputs["best_metric"] == min(t["metric"] for t in finished) and math.isfinite(outputs["best_metric"])
    assert set(outputs["best_config"]) == {"optim.lr", "loss.smoothness_weight"}
    assert 1e-4 <= outputs["best_config"]["optim.lr"] <= 3e-3
    assert pathlib.Path(outputs["motionnet"]).is_file()
    assert pathlib.Path(outputs["motionnet"]).is_relative_to(output / "trials" / outputs["best_trial"])
    stopped = [t for t in outputs["trials"].values() if not t["finished"]]
    assert all(t["steps"] < 16 for t in stopped)  # ASHA stopped these before their budget
    assert outputs["metrics"]["tune/stopped_early"] == len(stopped)

    client = MlflowClient(tracking.uri)
    parent = client.get_run(tracking.run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tracking.run_id}'"
    )
    assert {r.data.tags["h2s.trial_id"] for r in children} == set(outputs["trials"])
    best_run = next(r for r in children if r.data.tags["h2s.trial_id"] == outputs["best_trial"])
    assert best_run.info.status == "FINISHED"
    assert float(best_run.data.params["tune.optim.lr"]) == pytest.approx(outputs["best_config"]["optim.lr"])
    curve = client.get_metric_history(best_run.info.run_id, "loss/total")
    assert [m.step for m in curve] == [4, 8, 12, 16]
    for run in children:
        if run.data.tags["h2s.trial_id"] != outputs["best_trial"] and not outputs["trials"][run.data.tags["h2s.trial_id"]]["finished"]:
            assert run.info.status == "KILLED" and run.data.tags["h2s.stopped_early"] == "true"

    started = time.perf_counter()
    again = launch("tune", spec, str(output), tracking)
    restore_s = time.perf_counter() - started
    assert again["restored"] is True
    assert (again["best_trial"], again["best_metric"]) == (outputs["best_trial"], outputs["best_metric"])
    print(f"\ntune: {len(outputs['trials'])} trials, {len(stopped)} stopped early by ASHA, "
          f"best {outputs['best_trial']} {outputs['best_config']} loss/total={outputs['best_metric']:.4f}; "
          f"search {search_s:.1f}s, restore {restore_s:.1f}s")


def test_multi_worker_trial_gets_the_stage_scaling_resources_and_checkpoint_root(monkeypatch, tmp_path):
    """A 2-worker trial is its stage run by the launcher: the trainer it builds carries
    scaling.resources_per_worker, min_workers and the checkpoint root under the trial folder.
    (TorchTrainer.fit is replaced: what is checked is the trainer the trial builds.)"""
    import json

    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.train import UserCallback
    from ray.tune.integration import ray_train

    from h2s_dist.specs.driver import TuneSpec
    from h2s_dist.train import launch as launcher
    from h2s_dist.train.stages import tune as tune_stage

    class Context:
        def get_trial_id(self):
            return "t0"

    built = []

    def fake_fit(trainer):
        built.append(trainer)
        config = trainer.train_loop_config
        pathlib.Path(config["output_uri"], "outputs.json").write_text(json.dumps({"steps": 4, "metrics": {}}))

    class ReportCallback(UserCallback):
        pass  # the real one refuses to exist outside a Tune session

    monkeypatch.setattr(tune, "get_context", lambda: Context())
    monkeypatch.setattr(ray_train, "TuneReportCallback", ReportCallback)
    monkeypatch.setattr(TorchTrainer, "fit", fake_fit)
    monkeypatch.setattr(launcher, "ensure_ray", lambda address=None: None)
    spec = TuneSpec.model_validate({
        "trial": {"kind": "pretrain_motionnet", "data": {"dataset": str(tmp_path / "data"), "crop_size": 32},
                  "loop": {"max_steps": 4},
                  "scaling": {"num_workers": 2, "min_workers": 1, "resources_per_worker": {"decode_node": 0.5}}},
        "search_space": {"optim.lr": {"loguniform": [1e-4, 1e-3]}},
        "asha": None,
    })
    setup = {"kind": "pretrain_motionnet", "trial": spec.trial_data(), "output_uri": str(tmp_path / "tune"),
             "cpus_per_trial": 1, "tracking": {"uri": None, "run_id": None}}
    tune_stage.tune_trial({"optim.lr": 3e-4}, setup)

    (trainer,) = built
    assert trainer.scaling_config.num_workers == (1, 2)
    assert trainer.scaling_config.resources_per_worker == {"CPU": 1.0, "decode_node": 0.5}
    trial_folder = tmp_path / "tune" / "trials" / "t0"
    assert trainer.train_loop_config["checkpoint_root"] == str(trial_folder / "ray" / "trial-t0")
    assert trainer.train_loop_config["spec"]["optim"]["lr"] == 3e-4
    assert [type(c) for c in trainer.run_config.callbacks] == [ReportCallback]  # Tune hears the workers


def test_two_worker_trial_reports_every_log_step_to_tune(local_ray, make_synthetic_dataset, tmp_path):
    """A trial on 2 Ray Train workers reaches Tune at every log step (TuneReportCallback passes
    on each ray.train.report; the workers report metrics at log steps, checkpoints with theirs),
    not only at checkpoints: ASHA sees what an in-process trial shows it."""
    import json

    from h2s_dist.specs.driver import TuneSpec
    from h2s_dist.train.launch import launch

    spec = TuneSpec.model_validate({
        "trial": {
            "kind": "pretrain_motionnet", "motionnet": {"flavour": "tiny"}, "validation": None,
            "data": {"dataset": make_synthetic_dataset(shard_target_bytes=200_000), "crop_size": 32, "batch_size": 1,
                     "clip_len_frames": 3, "loader_workers": 0, "shuffle_buffer": 2, "epoch_length_samples": 8},
            "loop": {"max_steps": 8, "log_every_steps": 2, "picture_every_steps": 100, "checkpoint_every_steps": 4},
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        },
        "search_space": {"optim.lr": {"choice": [1e-3]}},
        "asha": None, "num_samples": 1, "cpus_per_trial": 0.5,
    })
    output = tmp_path / "tune"
    outputs = launch("tune", spec, str(output))
    (trial,) = outputs["trials"].values()
    assert trial["finished"] and trial["steps"] == 8

    (results,) = list((output / "ray" / "tune").glob("*/result.json"))
    steps = [json.loads(line)["step"] for line in results.read_text().splitlines() if line.strip()]
    # Log steps 2, 4, 6, 8, once each (4 and 8 also checkpoint: one report carries both); the
    # trial function's own final report (outputs written) may repeat step 8.
    assert steps[:4] == [2, 4, 6, 8] and set(steps[4:]) <= {8}, steps
