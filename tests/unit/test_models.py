"""Unit tests for h2s_dist.models: sizes against the paper's tables, oracle values for the
fixed layers, gradient routing per fine-tuning mode, fusion rules by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from h2s_dist.models import (
    VGG16Config,
    LEVEL_MULTIPLIERS,
    FinetuneMode,
    FlowNormalize,
    MotionNet,
    StackedOutput,
    StackedTemporalStream,
    build_motionnet,
    build_vgg16,
    cross_modality_conv1,
    full_resolution_flow,
    fuse_scores,
    temporal_from_rgb,
)
from h2s_dist.models.motionnet import RAW_FLOW_SCALE


def _count(layers: list[tuple[int, int, int]]) -> int:
    """Parameters of convs / deconvs written as (in, out, kernel), with bias."""
    return sum(cin * cout * k * k + cout for cin, cout, k in layers)


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Table 1 (top), written out independently of the model code: (in, out, kernel).
_ENCODER = [(33, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3),
            (256, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3), (512, 1024, 3), (1024, 1024, 3)]
_PREDICT6 = [(1024, 20, 3)]
_UPSAMPLE_FLOWS = [(20, 20, 4)] * 4
_DECODER = [  # deconvK 4x4, xconvK 3x3 on the concat (1044, 788, 404, 212), predict_flowK
    (1024, 512, 4), (1044, 512, 3), (512, 20, 3),
    (512, 256, 4), (788, 256, 3), (256, 20, 3),
    (256, 128, 4), (404, 128, 3), (128, 20, 3),
    (128, 64, 4), (212, 64, 3), (64, 20, 3),
]
# Without xconvK, the next deconv and predict_flowK read the concat directly.
_DECODER_NO_XCONV = [
    (1024, 512, 4), (1044, 20, 3),
    (1044, 256, 4), (788, 20, 3),
    (788, 128, 4), (404, 20, 3),
    (404, 64, 4), (212, 20, 3),
]
# Without the small-displacement design: FlowNetS's conv1 7x7, conv2 5x5, conv3 5x5, no conv1_1/conv2_1.
_ENCODER_LARGE = [(33, 64, 7), (64, 128, 5), (128, 256, 5)] + _ENCODER[5:]


def test_paper_motionnet_parameter_count_matches_table1():
    with torch.device("meta"):
        net = build_motionnet("paper")
    assert _num_params(net) == _count(_ENCODER + _PREDICT6 + _UPSAMPLE_FLOWS + _DECODER)


@pytest.mark.parametrize(
    "overrides, layers",
    [
        ({"conv_between_deconv": False}, _ENCODER + _PREDICT6 + _UPSAMPLE_FLOWS + _DECODER_NO_XCONV),
        ({"small_displacement": False}, _ENCODER_LARGE + _PREDICT6 + _UPSAMPLE_FLOWS + _DECODER),
        ({"small_displacement": False, "conv_between_deconv": False},
         _ENCODER_LARGE + _PREDICT6 + _UPSAMPLE_FLOWS + _DECODER_NO_XCONV),
    ],
)
def test_ablation_switches_change_parameter_count_as_written(overrides, layers):
    with torch.device("meta"):
        net = build_motionnet("paper", **overrides)
    assert _num_params(net) == _count(layers)


def test_paper_motionnet_outputs_five_levels_at_paper_resolutions():
    torch.manual_seed(0)
    net = build_motionnet("paper")
    with torch.no_grad():
        flows = net(torch.randn(1, 11, 3, 224, 224))
    assert [tuple(f.shape) for f in flows] == [(1, 20, s, s) for s in (7, 14, 28, 56, 112)]


@pytest.mark.parametrize(
    "overrides", [{}, {"small_displacement": False}, {"conv_between_deconv": False}, {"num_frames": 2}]
)
def test_tiny_motionnet_shapes_hold_for_every_switch(overrides):
    net = build_motionnet("tiny", **overrides)
    t = net.config.num_frames
    flows = net(torch.randn(2, t, 3, 64, 96))
    assert [tuple(f.shape) for f in flows] == [
        (2, 2 * (t - 1), 64 // s, 96 // s) for s in (32, 16, 8, 4, 2)
    ]


def test_small_motionnet_outputs_every_level_and_sits_between_tiny_and_paper_in_size():
    torch.manual_seed(0)
    net = build_motionnet("small")
    with torch.no_grad():
        flows = net(torch.randn(1, 11, 3, 64, 96) * 0.2)
    assert [tuple(f.shape) for f in flows] == [(1, 20, 64 // s, 96 // s) for s in (32, 16, 8, 4, 2)]
    with torch.device("meta"):
        sizes = {f: _num_params(build_motionnet(f)) for f in ("tiny", "small", "paper")}
    assert sizes["tiny"] < sizes["small"] < sizes["paper"] / 10, sizes
    assert flows[-1].abs().max().item() * RAW_FLOW_SCALE < 0.5  # starts near zero flow, as tiny
    assert build_motionnet("small", num_frames=2).config.flow_channels == 2


def test_motionnet_init_is_msra_with_zero_bias():
    torch.manual_seed(0)
    net = build_motionnet("paper")
    conv = net.encoder["conv4_1"]  # 512 * 9 fan-in: enough samples for a tight std
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)
    assert all(not m.bias.detach().any() for m in net.modules() if getattr(m, "bias", None) is not None)


def test_flow_head_init_std_starts_tiny_motionnet_near_zero_flow_and_paper_at_msra():
    torch.manual_seed(0)
    frames = torch.randn(2, 11, 3, 64, 64) * 0.2
    tiny_px = build_motionnet("tiny")(frames)[-1].abs().max().item() * RAW_FLOW_SCALE
    msra_px = build_motionnet("tiny", flow_head_init_std=None)(frames)[-1].abs().max().item() * RAW_FLOW_SCALE
    assert tiny_px < 0.5 < 5 < msra_px, (tiny_px, msra_px)
    paper = build_motionnet("paper", num_frames=2)
    head = paper.decoder["predict_flow2"]  # paper heads keep the release's MSRA init
    assert head.weight.std().item() == pytest.approx(math.sqrt(2 / (head.in_channels * 9)), rel=0.05)
    with pytest.raises(ValueError, match="flow_head_init_std"):
        build_motionnet("tiny", flow_head_init_std=-1.0)


@pytest.mark.parametrize("shape", [(1, 11, 3, 224, 200), (1, 11, 3, 48, 64), (1, 10, 3, 64, 64), (11, 3, 64, 64)])
def test_motionnet_rejects_bad_input_shapes_with_value_error(shape):
    net = build_motionnet("tiny")
    with pytest.raises(ValueError):
        net(torch.zeros(shape))


def test_build_motionnet_rejects_unknown_flavour_and_field():
    with pytest.raises(ValueError, match="flavour"):
        build_motionnet("huge")
    with pytest.raises(ValueError, match="valid fields"):
        build_motionnet("tiny", widths=3)


def test_level_multipliers_are_20_over_stride():
    assert LEVEL_MULTIPLIERS == (0.625, 1.25, 2.5, 5.0, 10.0)


def test_full_resolution_flow_scales_by_20_and_splits_u_v():
    raw = torch.zeros(1, 4, 3, 5)
    raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3] = 0.1, -0.05, 0.5, 0.0  # u0, v0, u1, v1
    px = full_resolution_flow(raw, (6, 10))
    assert px.shape == (1, 2, 2, 6, 10)
    expected = torch.tensor([[2.0, -1.0], [10.0, 0.0]]).view(1, 2, 2, 1, 1).expand_as(px)
    torch.testing.assert_close(px, expected)


def test_paper_vgg16_parameter_count_is_138m():
    fc_in = 512 * 7 * 7
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    expected = _count([(i, o, 3) for i, o in convs]) + _count([(fc_in, 4096, 1), (4096, 4096, 1), (4096, 1000, 1)])
    with torch.device("meta"):
        vgg = build_vgg16("paper", in_channels=3, num_classes=1000)
    assert _num_params(vgg) == expected == 138_357_544


def test_paper_vgg16_maps_224_inputs_to_class_scores():
    with torch.device("meta"):  # shapes only: the real 15 GFLOP forward is for the bench
        vgg = build_vgg16("paper", in_channels=20, num_classes=101)
        scores = vgg(torch.zeros(2, 20, 224, 224))
    assert tuple(scores.shape) == (2, 101)


@pytest.mark.parametrize("size", [32, 64])
def test_tiny_vgg16_runs_on_small_crops(size):
    vgg = build_vgg16("tiny", in_channels=20, num_classes=7)
    assert tuple(vgg(torch.randn(3, 20, size, size)).shape) == (3, 7)


def test_vgg16_rejects_crops_below_32_and_wrong_channels():
    vgg = build_vgg16("tiny", in_channels=3, num_classes=5)
    with pytest.raises(ValueError, match=">= 32"):
        vgg(torch.zeros(1, 3, 16, 64))
    with pytest.raises(ValueError):
        vgg(torch.zeros(1, 20, 32, 32))


def test_vgg16_dropout_and_fc8_init_follow_the_paper():
    torch.manual_seed(0)
    vgg = build_vgg16("tiny", num_classes=101, fc_channels=512, dropout_fc6=0.9, dropout_fc7=0.8)
    assert VGG16Config.paper().dropout_fc6 == 0.9 and VGG16Config.paper().dropout_fc7 == 0.8
    assert vgg.classifier.drop6.p == 0.9 and vgg.classifier.drop7.p == 0.8
    assert vgg.classifier.fc8.weight.std().item() == pytest.approx(0.001, rel=0.05)


def test_fc6_fc7_init_keeps_the_signal_at_any_width():
    """MSRA on fc6/fc7: std sqrt(2 / fan_in), so a narrow tiny net does not start silent."""
    torch.manual_seed(0)
    vgg = build_vgg16("tiny", num_classes=9)
    assert vgg.config.dropout_fc6 == 0.5  # the tiny flavour's: 0.9 of 64 units leaves too few
    fc7 = vgg.classifier.fc7.weight
    assert fc7.std().item() == pytest.approx((2.0 / fc7.shape[1]) ** 0.5, rel=0.1)


def test_cross_modality_conv1_is_channel_mean_replicated():
    w = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).view(2, 3, 1, 2)
    out = cross_modality_conv1(w, 20, scale=1.0)
    assert out.shape == (2, 20, 1, 2)
    # filter 0: channels [0,1], [2,3], [4,5] -> mean [2, 3]; filter 1: [6..11] -> [8, 9]
    torch.testing.assert_close(out[:, 7], torch.tensor([[[2.0, 3.0]], [[8.0, 9.0]]]))
    assert bool((out == out[:, :1]).all())


def test_cross_modality_filters_answer_a_flow_stack_on_the_rgb_scale():
    # An RGB filter sees (pixel - mean)/255; the same value arriving on every channel of a
    # flow stack in 0..255 units (x255) gives the same response per input channel.
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    value = torch.rand(1, 1, 8, 8) - 0.5
    rgb_response = torch.nn.functional.conv2d(value.expand(-1, 3, -1, -1), w)
    flow_response = torch.nn.functional.conv2d((value * 255).expand(-1, 20, -1, -1), cross_modality_conv1(w, 20))
    torch.testing.assert_close(flow_response / 20, rgb_response / 3, rtol=1e-4, atol=1e-5)


def test_temporal_from_rgb_loads_into_a_20_channel_vgg_except_mismatched_fc8():
    rgb = build_vgg16("tiny", in_channels=3, num_classes=1000)
    temporal = build_vgg16("tiny", in_channels=20, num_classes=101)
    state = temporal_from_rgb(rgb.state_dict(), 20, target_state_dict=temporal.state_dict())
    result = temporal.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["classifier.fc8.bias", "classifier.fc8.weight"]
    torch.testing.assert_close(
        temporal.features.conv1_1.weight,
        rgb.features.conv1_1.weight.mean(1, keepdim=True).expand(-1, 20, -1, -1) / 255,
    )
    torch.testing.assert_close(temporal.classifier.fc7.weight, rgb.classifier.fc7.weight)


def test_flow_normalization_maps_minus20_0_plus20_px_to_0_127p5_255_minus_128():
    raw = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)  # x20 = -20, 0, +20 px
    out = FlowNormalize()(raw)
    assert out.shape == (1, 3, 4, 4)
    for c, expected in enumerate((-128.0, -0.5, 127.0)):
        torch.testing.assert_close(out[:, c], torch.full((1, 4, 4), expected))


def test_flow_normalization_clamps_beyond_20_px_and_stops_gradient_there():
    raw = torch.tensor([-3.0, -0.5, 0.25, 2.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2).clone().requires_grad_(True)
    out = FlowNormalize()(raw)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-128.0, -0.5 - 63.75, -0.5 + 31.875, 127.0]))
    out.sum().backward()
    per_channel = raw.grad[0, :, 0, 0]
    assert per_channel[0] == 0 and per_channel[3] == 0
    # inside the clamp: d/draw of (20 raw + 20) * 6.375 = 127.5 per output pixel; 16 outputs spread over 4 inputs
    torch.testing.assert_close(per_channel[1:3], torch.tensor([127.5 * 4, 127.5 * 4]))


def test_flow_normalization_release_border_darkens_only_the_outer_ring():
    raw = torch.full((1, 2, 4, 4), 0.5)  # +10 px -> 191.25 before the -128
    out = FlowNormalize(release_border=True)(raw) + 128.0
    torch.testing.assert_close(out[0, :, 1:-1, 1:-1], torch.full((2, 6, 6), 191.25))
    torch.testing.assert_close(out[0, :, 0, 3], torch.full((2,), 191.25 * 0.75))
    torch.testing.assert_close(out[0, :, 0, 0], torch.full((2,), 191.25 * 0.75 * 0.75))


def _stacked(mode: str) -> StackedTemporalStream:
    torch.manual_seed(0)
    return StackedTemporalStream(build_motionnet("tiny"), build_vgg16("tiny", in_channels=20, num_classes=5), mode)


def _grads_present(module: torch.nn.Module) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()]


def test_frozen_mode_sends_no_gradient_to_motionnet_but_trains_vgg():
    model = _stacked("frozen").train()
    out = model(torch.randn(2, 11, 3, 32, 32))
    assert isinstance(out, StackedOutput) and tuple(out.scores.shape) == (2, 5)
    out.scores.sum().backward()
    assert all(p.grad is None for p in model.motionnet.parameters())
    assert all(not p.requires_grad for p in model.motionnet.parameters())
    assert any(_grads_present(model.vgg))
    assert not model.motionnet.training and model.vgg.training
    assert not any(f.requires_grad for f in out.flows)
    assert not model.uses_unsupervised_loss


@pytest.mark.parametrize("mode, unsup", [("action_only", False), ("action_plus_unsup", True)])
def test_trainable_modes_send_gradient_to_both_networks(mode, unsup):
    model = _stacked(mode).train()
    model.vgg.eval()  # no dropout, so every fc unit passes gradient on this tiny net
    out = model(torch.randn(2, 11, 3, 32, 32))
    out.scores.sum().backward()
    assert all(_grads_present(model.vgg))
    assert model.motionnet.decoder["predict_flow2"].weight.grad.abs().sum() > 0
    assert model.motionnet.encoder["conv1"].weight.grad.abs().sum() > 0
    assert model.uses_unsupervised_loss is unsup
    assert model.mode is FinetuneMode(mode)


def test_stacked_stream_rejects_mismatched_channels_and_unknown_mode():
    with pytest.raises(ValueError, match="in_channels=20"):
        StackedTemporalStream(build_motionnet("tiny"), build_vgg16("tiny", in_channels=3), "frozen")
    with pytest.raises(ValueError, match="mode"):
        StackedTemporalStream(build_motionnet("tiny"), build_vgg16("tiny", in_channels=20), "c")


def test_weighted_sum_fusion_matches_hand_numbers():
    spatial = torch.tensor([[1.0, 2.0]])
    temporal = torch.tensor([[3.0, -1.0]])
    torch.testing.assert_close(fuse_scores(spatial, temporal), torch.tensor([[5.5, 0.5]]))
    torch.testing.assert_close(fuse_scores(spatial, temporal, weights=(2.0, 0.0)), torch.tensor([[2.0, 4.0]]))


def test_release_fusion_is_weighted_sum_of_softmaxes():
    spatial = torch.tensor([[0.0, math.log(3.0)]])  # softmax (0.25, 0.75)
    temporal = torch.tensor([[math.log(4.0), 0.0]])  # softmax (0.8, 0.2)
    fused = fuse_scores(spatial, temporal, rule="release")
    torch.testing.assert_close(fused, torch.tensor([[0.25 + 1.5 * 0.8, 0.75 + 1.5 * 0.2]]))


def test_fusion_rejects_unknown_rule_and_shape_mismatch():
    with pytest.raises(ValueError, match="rule"):
        fuse_scores(torch.zeros(1, 3), torch.zeros(1, 3), rule="max")
    with pytest.raises(ValueError, match="same shape"):
        fuse_scores(torch.zeros(1, 3), torch.zeros(1, 4))


def test_models_import_neither_ray_nor_mlflow():
    code = ("import h2s_dist.models, sys; "
            "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules and 'fsspec' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_motionnet_is_the_paper_flavour():
    with torch.device("meta"):
        assert MotionNet().config == build_motionnet("paper").config


def test_deconv_and_upsample_biases_are_frozen_at_zero_through_training_steps():
    from h2s_dist.specs.common import OptimSpec
    from h2s_dist.train.builders import motionnet_param_groups
    from h2s_dist.train.loop import build_optimizer

    torch.manual_seed(0)
    net = build_motionnet("tiny", num_frames=2)
    frozen = [f"decoder.{n}.bias" for n in net.transposed_conv_names()]
    assert len(frozen) == 8  # deconv5..2 and upsample_flow6to5..3to2
    params = dict(net.named_parameters())
    assert all(not params[n].requires_grad for n in frozen)
    optim = OptimSpec(name="adam", lr=1e-2, weight_decay=4e-4)
    optimizer = build_optimizer(motionnet_param_groups(net, optim.lr, 2.0), optim)
    for _ in range(2):
        optimizer.zero_grad()
        sum(f.square().mean() for f in net(torch.randn(2, 2, 3, 64, 64))).backward()
        optimizer.step()
    assert all(not params[n].detach().any() for n in frozen)
    assert params["decoder.deconv5.weight"].grad is not None  # their weights still learn


def test_deconv_weights_have_no_weight_decay_and_every_other_trainable_parameter_is_in_one_group():
    from h2s_dist.specs.common import OptimSpec
    from h2s_dist.train.builders import motionnet_param_groups
    from h2s_dist.train.loop import build_optimizer

    net = build_motionnet("tiny", num_frames=3)
    optim = OptimSpec(name="sgd", lr=1e-3, weight_decay=5e-4)
    optimizer = build_optimizer(motionnet_param_groups(net, optim.lr, 2.0), optim)
    names = {id(p): n for n, p in net.named_parameters()}
    decay = {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert {n for n, wd in decay.items() if wd == 0} == set(net.no_weight_decay_names())
    assert sorted(net.no_weight_decay_names())[:2] == ["decoder.deconv2.weight", "decoder.deconv3.weight"]
    assert all(wd == 5e-4 for n, wd in decay.items() if n not in net.no_weight_decay_names())
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert sorted(decay) == sorted(trainable) and len(decay) == sum(len(g["params"]) for g in optimizer.param_groups)


def test_a_state_dict_with_trained_deconv_biases_still_loads_strictly_and_keeps_them():
    old = build_motionnet("tiny", num_frames=2).state_dict()
    old["decoder.deconv5.bias"] = torch.full_like(old["decoder.deconv5.bias"], 0.25)  # trained before the freeze
    net = build_motionnet("tiny", num_frames=2)
    net.load_state_dict(old, strict=True)
    assert torch.equal(net.decoder["deconv5"].bias.detach(), old["decoder.deconv5.bias"])
    assert not net.decoder["deconv5"].bias.requires_grad
