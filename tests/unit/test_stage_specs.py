"""Stage-spec knobs that reach the models and losses: label smoothing, flow-head init."""

import math

import pytest
import torch
from pydantic import ValidationError

from h2s_dist.specs.common import MotionNetSpec
from h2s_dist.losses import action_loss
from h2s_dist.train.builders import build_motionnet_from
from h2s_dist.specs.training import SpatialSpec


def test_label_smoothing_moves_target_mass_evenly_onto_every_class():
    scores, labels = torch.tensor([[10.0, 0.0]]), torch.tensor([0])
    log_p = torch.log_softmax(scores, 1)[0]
    plain, terms = action_loss(scores, labels)
    assert plain.item() == pytest.approx(-log_p[0].item()) and terms["train/top1"] == 1.0
    smoothed, _ = action_loss(scores, labels, label_smoothing=0.2)
    # target (0.9, 0.1): 1 - 0.2 on the label plus 0.2 / 2 on each of the two classes
    assert smoothed.item() == pytest.approx(-(0.9 * log_p[0] + 0.1 * log_p[1]).item())
    assert smoothed.item() > 0.9 > math.log(2) > plain.item()


def test_label_smoothing_must_be_below_one():
    data = {"dataset": "file:///d", "clip_len_frames": 1}
    assert SpatialSpec.model_validate({"data": data, "label_smoothing": 0.2}).label_smoothing == 0.2
    with pytest.raises(ValidationError, match="label_smoothing"):
        SpatialSpec.model_validate({"data": data, "label_smoothing": 1.0})


def test_flow_head_init_from_the_spec_defaults_to_the_flavour_and_accepts_msra_or_a_std():
    def head_std(**fields):
        torch.manual_seed(0)
        net = build_motionnet_from(MotionNetSpec(flavour="tiny", **fields), num_frames=2)
        return net.decoder["predict_flow2"].weight.std().item()

    fan_in = build_motionnet_from(MotionNetSpec(flavour="tiny"), 2).decoder["predict_flow2"].in_channels * 9
    msra = math.sqrt(2 / fan_in)
    assert head_std() == pytest.approx(1e-3, rel=0.2)  # the tiny flavour's own
    assert head_std(flow_head_init_std="msra") == pytest.approx(msra, rel=0.2)
    assert head_std(flow_head_init_std=0.05) == pytest.approx(0.05, rel=0.2)
    with pytest.raises(ValidationError, match="flow_head_init_std"):
        MotionNetSpec(flow_head_init_std="xavier")


def test_motionnet_spec_takes_the_small_flavour_and_vgg_fields_still_refuse_it():
    net = build_motionnet_from(MotionNetSpec(flavour="small"), num_frames=2)
    assert net.config.encoder_channels == (32, 64, 96, 128, 128, 192)
    assert SpatialSpec.model_validate({"data": {"dataset": "x"}, "vgg_flavour": "tiny"}).vgg_flavour == "tiny"
    with pytest.raises(ValidationError, match="vgg_flavour"):
        SpatialSpec.model_validate({"data": {"dataset": "x"}, "vgg_flavour": "small"})


def test_non_square_crops_are_off_by_default_and_reach_the_clip_stream():
    from h2s_dist.specs.common import DataSpec
    from h2s_dist.train.task import stream_config

    assert DataSpec(dataset="x").max_distort == 0
    assert stream_config(DataSpec(dataset="x", max_distort=1), labeled=True, seed=0).max_distort == 1
