"""Pretraining's flow validation: `val/epe` on ground-truth pairs, per set and overall."""

from __future__ import annotations

import math

import pytest

from h2s_dist.specs.driver import TuneSpec
from h2s_dist.specs.training import PretrainSpec


def _spec(**validation) -> PretrainSpec:
    return PretrainSpec.model_validate({
        "motionnet": {"flavour": "tiny"}, "data": {"dataset": "unused", "crop_size": 64, "clip_len_frames": 3},
        "validation": {"synthetic_pairs": 3, "synthetic_size": [64, 32], **validation},
    })


def _task(spec):
    from h2s_dist.train.stages.pretrain import PretrainTask

    return PretrainTask(spec)


def test_validation_scores_synthetic_pairs_in_their_real_clip():
    import torch

    task = _task(_spec())
    model = task.build_model()
    metrics = task.validate(model, torch.device("cpu"))
    assert set(metrics) == {"val/epe", "val/epe/synthetic"}
    assert math.isfinite(metrics["val/epe"]) and metrics["val/epe"] == metrics["val/epe/synthetic"]
    (pair, *_) = task.validation_sets()["synthetic"]
    assert pair.frame1.shape == (32, 64, 3) and pair.window is not None and len(pair.window) == 3


def test_validation_reads_the_flow_dev_set(shared_data):
    import torch

    task = _task(_spec(synthetic_pairs=0, flow_dev=str(shared_data / "flow_dev"), max_side=96))
    metrics = task.validate(task.build_model(), torch.device("cpu"))
    assert {"val/epe/flyingchairs", "val/epe/kitti", "val/epe/yosemite"} <= set(metrics)
    assert metrics["val/epe"] == pytest.approx(sum(metrics[f"val/epe/{s}"] for s in ("flyingchairs", "kitti", "yosemite")) / 3)
    assert max(max(p.frame1.shape[:2]) for pairs in task.validation_sets().values() for p in pairs) <= 96


def test_validation_needs_some_pairs_and_tune_on_val_needs_validation():
    with pytest.raises(ValueError, match="synthetic_pairs > 0 or a flow_dev"):
        _spec(synthetic_pairs=0)
    trial = {"kind": "pretrain_motionnet", "data": {"dataset": "x", "crop_size": 64}, "validation": None}
    with pytest.raises(ValueError, match="needs the trial to validate"):
        TuneSpec.model_validate({"trial": trial, "search_space": {"optim.lr": {"loguniform": [1e-4, 1e-3]}},
                                 "metric": "val/epe", "asha": None})
