"""Every training stage in this process on tiny models and synthetic shards: weights are
handed on, a crash resumes at the checkpointed step with the batches an uninterrupted run
trains on, MLflow holds what a researcher reads (skipped samples included)."""

from __future__ import annotations

import contextlib
import json
import pathlib

import pytest
import torch

from h2s_dist.train.launch import launch
from h2s_dist.train.session import LocalSession
from h2s_dist.train.checkpoint import CheckpointMismatchError
from h2s_dist.specs.evaluate import EvaluateSpec
from h2s_dist.specs.training import FinetuneSpec
from h2s_dist.train.stages.finetune import FinetuneTask
from h2s_dist.specs.training import PretrainSpec
from h2s_dist.train.stages.pretrain import PretrainTask
from h2s_dist.specs.training import SpatialSpec
from tests.conftest_parts.data import copy_with_corrupt_samples

TINY = {"flavour": "tiny"}


def data(uri: str, **overrides) -> dict:
    return {"dataset": uri, "crop_size": 32, "batch_size": 4, "loader_workers": 0, "shuffle_buffer": 8,
            "epoch_length_samples": 32, **overrides}


LOOP = {"max_steps": 4, "log_every_steps": 2, "picture_every_steps": 4, "checkpoint_every_steps": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_stages_chain_pretrain_finetune_spatial_evaluate(make_synthetic_dataset, tmp_path, stage_run):
    uri = make_synthetic_dataset()
    pre = launch("pretrain_motionnet", PretrainSpec(motionnet=TINY, data=data(uri), loop=LOOP),
                 str(tmp_path / "pre"), stage_run("pretrain"))
    assert pre["steps"] == 4 and pre["motionnet"].endswith("motionnet.pt")
    for mode in ("frozen", "action_only", "action_plus_unsup"):
        ft = launch("finetune_stacked", FinetuneSpec(
            mode=mode, motionnet=TINY, motionnet_weights=pre["motionnet"], vgg_flavour="tiny",
            data=data(uri), loop=LOOP), str(tmp_path / f"ft-{mode}"), stage_run(f"finetune-{mode}"))
        assert set(k for k in ft["metrics"] if k.startswith("loss/")) >= {"loss/action", "loss/total"}
        assert ("loss/pixel" in ft["metrics"]) == (mode == "action_plus_unsup")
    sp = launch("train_spatial", SpatialSpec(vgg_flavour="tiny", data=data(uri, clip_len_frames=1), loop=LOOP),
                str(tmp_path / "sp"), stage_run("spatial"))
    evaluate_run = stage_run("evaluate")
    ev = launch("evaluate", EvaluateSpec(
        dataset=uri, crop_size=32, num_windows=2, num_crops=10, spatial_weights=sp["spatial"],
        stacked_weights=ft["stacked_temporal"], motionnet=TINY, vgg_flavour="tiny", loader_workers=0),
        str(tmp_path / "ev"), evaluate_run)
    metrics = ev["metrics"]
    assert metrics["eval/videos"] == 9  # split 1 test side of 36 synthetic videos
    for stream in ("spatial", "stacked", "hidden_two_stream", "hidden_two_stream_weighted_sum"):
        assert 0.0 <= metrics[f"accuracy/{stream}/top1"] <= metrics[f"accuracy/{stream}/top5"] <= 1.0
    assert metrics["fps/hidden_two_stream"] < metrics["fps/stacked"]
    assert 1 / 9 - 1e-6 <= metrics["confidence/spatial"] <= 1.0
    # Every video's scores are kept: the saved fused scores give the logged accuracy.
    import io

    import numpy as np

    from h2s_dist.data import storage

    saved = np.load(io.BytesIO(storage.read_bytes(ev["scores"])))
    assert len(saved["keys"]) == len(saved["labels"]) == 9 and len(saved["classes"]) == 9
    assert saved["stacked"].shape == saved["hidden_two_stream"].shape == (9, 9)
    top1 = float((saved["hidden_two_stream"].argmax(1) == saved["labels"]).mean())
    assert top1 == metrics["accuracy/hidden_two_stream/top1"]
    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient(evaluate_run.uri).list_artifacts(evaluate_run.run_id)}
    assert {"scores.npz", "evaluation.json"} <= artifacts


def test_frozen_mode_trains_only_the_vgg(make_synthetic_dataset, tmp_path):
    from h2s_dist.specs.common import OptimSpec

    spec = FinetuneSpec(mode="frozen", motionnet=TINY, vgg_flavour="tiny", data=data(make_synthetic_dataset()))
    task = FinetuneTask(spec)
    model = task.build_model()
    names = [g["name"] for g in task.param_groups(model, OptimSpec())]
    assert names == ["vgg.weight", "vgg.bias"]


@contextlib.contextmanager
def _crash_on_fourth_step(monkeypatch):
    """Pretraining raises in its 4th loss call inside the block (the block expects it), and
    trains normally after it."""
    real_loss, calls = PretrainTask.loss, {"n": 0}

    def crash_on_fourth_step(self, model, batch, device):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real_loss(self, model, batch, device)

    monkeypatch.setattr(PretrainTask, "loss", crash_on_fourth_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        yield
    monkeypatch.setattr(PretrainTask, "loss", real_loss)


def _record_batches(monkeypatch) -> list[float]:
    """The sum of every batch pretraining computes a loss on, in order (the list returned)."""
    real_loss, seen = PretrainTask.loss, []

    def recording_loss(self, model, batch, device):
        seen.append(float(batch[0].double().sum()))
        return real_loss(self, model, batch, device)

    monkeypatch.setattr(PretrainTask, "loss", recording_loss)
    return seen


def test_crash_resumes_at_the_checkpointed_step_with_the_batches_of_an_uninterrupted_run(
    make_synthetic_dataset, tmp_path, monkeypatch
):
    from h2s_dist.weights import load_state_dict

    spec = PretrainSpec(motionnet=TINY, data=data(make_synthetic_dataset()), loop={**LOOP, "max_steps": 6})
    seen = _record_batches(monkeypatch)
    straight = launch("pretrain_motionnet", spec, str(tmp_path / "straight"))
    straight_batches = list(seen)
    with _crash_on_fourth_step(monkeypatch):
        launch("pretrain_motionnet", spec, str(tmp_path / "pre"))
    seen.clear()
    out = launch("pretrain_motionnet", spec, str(tmp_path / "pre"))
    assert out["resumed_from_step"] == 2 and out["steps"] == 6
    # The restored stream continues at the checkpointed data position: steps 3..6 see the
    # uninterrupted run's batches, and with model, optimiser and RNG restored end where it ended.
    assert len(straight_batches) == 6 and seen == straight_batches[2:]
    resumed_weights, straight_weights = load_state_dict(out["motionnet"]), load_state_dict(straight["motionnet"])
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in straight_weights)


def test_corrupt_samples_are_counted_in_data_skipped_and_listed_in_skipped_json(
    make_synthetic_dataset, tmp_path, stage_run
):
    from mlflow.tracking import MlflowClient

    from h2s_dist.data import manifest

    uri = make_synthetic_dataset()
    train_keys = manifest.select(manifest.read_manifest(uri), 1, "train").column("key").to_pylist()
    victims = set(train_keys[::3])
    corrupt = copy_with_corrupt_samples(uri, tmp_path / "corrupt", victims)
    tracking = stage_run("skips")
    out = launch("pretrain_motionnet", PretrainSpec(motionnet=TINY, data=data(corrupt), loop=LOOP),
                 str(tmp_path / "pre"), tracking)
    assert out["steps"] == 4
    client = MlflowClient(tracking.uri)
    history = client.get_metric_history(tracking.run_id, "data/skipped")
    listed = json.loads(pathlib.Path(client.download_artifacts(tracking.run_id, "skipped.json", str(tmp_path))).read_text())
    assert [m.step for m in history] == [2, 4]
    assert history[-1].value == listed["num_skipped"] == len(listed["skipped"]) > 0
    assert {s["key"] for s in listed["skipped"]} <= victims
    assert all(s["source"].endswith(".tar") and s["reason"] for s in listed["skipped"])
    samples = client.get_metric_history(tracking.run_id, "data/samples_seen")
    assert [m.value for m in samples] == [2 * 4, 4 * 4]  # clips trained on, skips not counted


def test_a_run_resumed_in_place_logs_each_step_once(make_synthetic_dataset, tmp_path, monkeypatch, stage_run):
    """As a restarted Ray Train worker does: the crashed attempt and the resume log into one
    run; the resume redoes step 3 (after checkpoint 2), which is already in the run."""
    from mlflow.tracking import MlflowClient

    tracking = stage_run("resumed-in-place")
    spec = PretrainSpec(motionnet=TINY, data=data(make_synthetic_dataset()),
                        loop={**LOOP, "max_steps": 5, "log_every_steps": 1})
    with _crash_on_fourth_step(monkeypatch):
        launch("pretrain_motionnet", spec, str(tmp_path / "pre"), tracking)
    assert launch("pretrain_motionnet", spec, str(tmp_path / "pre"), tracking)["resumed_from_step"] == 2
    history = MlflowClient(tracking.uri).get_metric_history(tracking.run_id, "loss/total")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def test_checkpoint_of_another_spec_is_refused(make_synthetic_dataset, tmp_path):
    spec = PretrainSpec(motionnet=TINY, data=data(make_synthetic_dataset()), loop={**LOOP, "max_steps": 2})
    launch("pretrain_motionnet", spec, str(tmp_path / "pre"))
    session = LocalSession(str(tmp_path / "pre" / "checkpoints"), spec_hash="another-spec")
    with pytest.raises(CheckpointMismatchError, match="different stage spec"):
        session.restore()


def test_mlflow_run_holds_params_metrics_pictures_and_registered_weights(make_synthetic_dataset, tmp_path, stage_run):
    from mlflow.tracking import MlflowClient

    tracking = stage_run("pretrain")
    spec = PretrainSpec(motionnet=TINY, data=data(make_synthetic_dataset()), loop=LOOP,
                        optim={"name": "adam", "lr": 1e-3, "weight_decay": 0.0})
    launch("pretrain_motionnet", spec, str(tmp_path / "pre"), tracking)
    client = MlflowClient(tracking.uri)
    run = client.get_run(tracking.run_id)
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["motionnet.flavour"] == "tiny"
    assert {"loss/pixel", "loss/smooth", "loss/ssim", "loss/total", "throughput/samples_per_s"} <= set(run.data.metrics)
    history = client.get_metric_history(tracking.run_id, "loss/total")
    assert [m.step for m in history] == [2, 4]
    pictures = [a.path for a in client.list_artifacts(tracking.run_id, "flows")]
    assert pictures == ["flows/step_0000004.png"]
    assert [a.path for a in client.list_artifacts(tracking.run_id, "weights")] == ["weights/motionnet.pt"]
    versions = client.search_model_versions("name='motionnet'")
    assert any(v.run_id == tracking.run_id for v in versions)
