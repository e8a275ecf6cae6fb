"""Oracle tests of the flow geometry in h2s_dist.warp on tiny hand-built tensors."""

import subprocess
import sys

import pytest
import torch

from h2s_dist.warp import (
    RAW_FLOW_SCALE,
    backward_flows_from_reversed_clip,
    backward_warp,
    border_mask,
    border_width,
    forward_backward_visible,
    raw_to_pixels,
    split_flows,
)


def _image(b=2, c=3, h=6, w=7):
    torch.manual_seed(0)
    return torch.rand(b, c, h, w)


def _constant_flow(b, h, w, u, v):
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = u, v
    return flow


def test_zero_flow_warp_is_identity():
    img = _image()
    out = backward_warp(img, torch.zeros(2, 2, 6, 7))
    torch.testing.assert_close(out, img, atol=1e-6, rtol=0)


def test_one_pixel_right_shift_samples_the_right_neighbour_exactly():
    img = _image()
    out = backward_warp(img, _constant_flow(2, 6, 7, 1.0, 0.0))
    # u = +1: output(x) = image(x + 1); the last column reads outside -> 0.
    torch.testing.assert_close(out[..., :-1], img[..., 1:], atol=1e-6, rtol=0)
    assert out[..., -1].abs().max() == 0


def test_one_pixel_down_shift_samples_the_lower_neighbour_exactly():
    img = _image()
    out = backward_warp(img, _constant_flow(2, 6, 7, 0.0, 1.0))
    torch.testing.assert_close(out[..., :-1, :], img[..., 1:, :], atol=1e-6, rtol=0)
    assert out[..., -1, :].abs().max() == 0


def test_warp_recovers_frame_t_from_frame_t_plus_1_of_a_rightward_motion():
    # Content moves 2 px right from frame t to t+1, so flow t->t+1 is u = +2.
    frame_t = _image(1, 1, 5, 9)
    frame_t1 = torch.zeros_like(frame_t)
    frame_t1[..., 2:] = frame_t[..., :-2]
    out = backward_warp(frame_t1, _constant_flow(1, 5, 9, 2.0, 0.0))
    torch.testing.assert_close(out[..., :-2], frame_t[..., :-2], atol=1e-6, rtol=0)


def test_half_pixel_shift_interpolates_bilinearly():
    img = _image(1, 1, 4, 5)
    out = backward_warp(img, _constant_flow(1, 4, 5, 0.5, 0.0))
    torch.testing.assert_close(out[..., :-1], 0.5 * (img[..., :-1] + img[..., 1:]), atol=1e-6, rtol=0)


def test_samples_far_outside_the_image_are_zero():
    img = _image() + 1.0
    out = backward_warp(img, _constant_flow(2, 6, 7, -50.0, 30.0))
    assert out.abs().max() == 0


def test_warp_on_a_single_pixel_level_is_defined():
    img = torch.ones(1, 3, 1, 1)
    torch.testing.assert_close(backward_warp(img, torch.zeros(1, 2, 1, 1)), img)
    assert backward_warp(img, _constant_flow(1, 1, 1, 1.0, 0.0)).abs().max() == 0


def test_warp_gradient_reaches_the_flow():
    img = _image(1, 1, 5, 5)
    flow = _constant_flow(1, 5, 5, 0.3, -0.2).requires_grad_()
    backward_warp(img, flow).sum().backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0


def test_warp_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="resize the image"):
        backward_warp(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 4, 4))


def test_raw_to_pixels_uses_the_paper_multipliers_at_224():
    expected = {7: 0.625, 14: 1.25, 28: 2.5, 56: 5.0, 112: 10.0}
    for size, mult in expected.items():
        raw = torch.ones(1, 20, size, size)
        assert raw_to_pixels(raw, 224).unique().tolist() == [mult]
        assert raw_to_pixels(raw, 224, 224).unique().tolist() == [mult]
    assert RAW_FLOW_SCALE == 20.0


def test_raw_to_pixels_scales_u_by_width_and_v_by_height():
    raw = torch.ones(1, 4, 8, 16)  # a level of a 64x64 input resized non-uniformly
    px = raw_to_pixels(raw, full_height=64, full_width=64)
    assert px[:, 0::2].unique().tolist() == [20.0 * 16 / 64]
    assert px[:, 1::2].unique().tolist() == [20.0 * 8 / 64]


def test_split_flows_puts_u_and_v_of_each_pair_together():
    raw = torch.arange(6.0).view(1, 6, 1, 1)  # u0 v0 u1 v1 u2 v2
    flows = split_flows(raw)
    assert flows.shape == (1, 3, 2, 1, 1)
    assert flows[0, :, 0].flatten().tolist() == [0.0, 2.0, 4.0]
    assert flows[0, :, 1].flatten().tolist() == [1.0, 3.0, 5.0]


def test_border_width_matches_the_release_at_each_224_level():
    assert [border_width(s, s) for s in (7, 14, 28, 56, 112)] == [1, 1, 3, 6, 11]
    assert border_width(10, 50, 0.25) == 3  # 2.5 rounds half up, of the shorter side


def test_border_mask_counts_the_valid_pixels():
    mask = border_mask(28, 40)  # border 3 on every side
    assert mask.shape == (28, 40)
    assert mask.sum().item() == (28 - 6) * (40 - 6)
    assert mask[3, 3] == 1 and mask[2, 10] == 0 and mask[10, 37] == 0 and mask[24, 36] == 1
    assert border_mask(4, 4).sum().item() == 16  # 0.4 rounds to no border


def test_border_mask_that_leaves_nothing_is_an_error():
    with pytest.raises(ValueError, match="no valid pixel"):
        border_mask(2, 2, fraction=0.49)


# --- Forward-backward occlusion ------------------------------------------------


def test_consistent_constant_flows_are_visible_everywhere():
    # Half a pixel right and down, back by the same: every pixel, the last row and column
    # included (their backward flow is read half outside, b = -0.25 or -0.125: still
    # within alpha2 = 0.5 px^2).
    fw, bw = _constant_flow(2, 6, 7, 0.5, 0.5), _constant_flow(2, 6, 7, -0.5, -0.5)
    visible = forward_backward_visible(fw, bw)
    assert visible.shape == (2, 1, 6, 7)
    assert visible.min() == 1


def test_flow_leaving_the_image_counts_as_occluded():
    # 2 px right: the last two columns land outside, where the backward flow reads 0:
    # |fw + 0|^2 = 4 > 0.01 * 4 + 0.5. Everything else is consistent.
    visible = forward_backward_visible(_constant_flow(1, 5, 8, 2.0, 0.0), _constant_flow(1, 5, 8, -2.0, 0.0))
    assert visible[..., :-2].min() == 1
    assert visible[..., -2:].max() == 0


def test_an_inconsistent_region_is_masked_where_the_forward_flow_lands_in_it():
    fw, bw = _constant_flow(1, 6, 9, 2.0, 0.0), _constant_flow(1, 6, 9, -2.0, 0.0)
    bw[..., 1:3, 4:6] = 2.0  # in frame t+1, rows 1-2, columns 4-5 point the wrong way
    visible = forward_backward_visible(fw, bw)
    expected = torch.ones(1, 1, 6, 9)
    expected[..., 1:3, 2:4] = 0  # x + 2 lands in columns 4-5
    expected[..., -2:] = 0  # lands outside the image
    torch.testing.assert_close(visible, expected)


def test_the_occlusion_bound_by_hand():
    # Zero forward flow reads the backward flow at the pixel itself, b:
    # b = 0.70: |0 + b|^2 = 0.49 <= 0.01 * 0.49 + 0.5 = 0.5049 -> visible;
    # b = 0.72: 0.5184 > 0.01 * 0.5184 + 0.5 = 0.505184 -> occluded.
    fw = _constant_flow(1, 1, 1, 0.0, 0.0)
    assert forward_backward_visible(fw, _constant_flow(1, 1, 1, 0.70, 0.0)).item() == 1
    assert forward_backward_visible(fw, _constant_flow(1, 1, 1, 0.72, 0.0)).item() == 0
    # fw = (1, 0): pixel 0 lands on pixel 1, whose backward flow is (b, 0):
    # b = -0.5: 0.25 <= 0.01 * (1 + 0.25) + 0.5 = 0.5125 -> visible;
    # b = -0.2: 0.64 > 0.01 * (1 + 0.04) + 0.5 = 0.5104 -> occluded, unless alpha2 = 0.65.
    fw, bw = _constant_flow(1, 1, 3, 1.0, 0.0), torch.zeros(1, 2, 1, 3)
    for b_u, alpha2, expected in ((-0.5, 0.5, 1.0), (-0.2, 0.5, 0.0), (-0.2, 0.65, 1.0)):
        bw[:, 0, :, 1] = b_u
        assert forward_backward_visible(fw, bw, alpha2=alpha2)[0, 0, 0, 0].item() == expected


def test_reversed_clip_flow_j_is_the_backward_flow_of_pair_t_minus_2_minus_j():
    # T = 4 frames, 3 pairs. Reversed flow j carries the value 10 j (u) and 10 j + 1 (v).
    raw = torch.tensor([0.0, 1.0, 10.0, 11.0, 20.0, 21.0]).view(1, 6, 1, 1)
    backward = backward_flows_from_reversed_clip(raw)
    # backward i maps frame i+1 to frame i = reversed flow T-2-i: i = 0 -> j = 2, ...
    assert backward.flatten().tolist() == [20.0, 21.0, 10.0, 11.0, 0.0, 1.0]


def test_backward_flows_of_a_reversed_translation_undo_the_forward_flow():
    # Content moves 2 px right per frame. Run backwards it moves 2 px left: the reversed
    # clip's flows are u = -2, and the forward-backward check passes away from the edge.
    t, b, h, w = 3, 1, 5, 12
    frames = torch.rand(b, 1, h, w + 2 * t, generator=torch.Generator().manual_seed(0))
    clip = torch.stack([frames[..., 2 * t - 2 * i : 2 * t - 2 * i + w] for i in range(t)], 1)  # (b, t, 1, h, w)
    reversed_clip = clip.flip(1)
    for j in range(t - 1):  # reversed frame j+1 sampled at x - 2 rebuilds reversed frame j
        rebuilt = backward_warp(reversed_clip[:, j + 1], _constant_flow(b, h, w, -2.0, 0.0))
        torch.testing.assert_close(rebuilt[..., 2:], reversed_clip[:, j, ..., 2:])
    raw_reversed = torch.zeros(b, 2 * (t - 1), h, w)
    raw_reversed[:, 0::2] = -2.0
    backward = split_flows(backward_flows_from_reversed_clip(raw_reversed))
    for i in range(t - 1):  # and frame i sampled along backward flow i rebuilds frame i+1
        rebuilt = backward_warp(clip[:, i], backward[:, i])
        torch.testing.assert_close(rebuilt[..., 2:], clip[:, i + 1, ..., 2:])
        visible = forward_backward_visible(_constant_flow(b, h, w, 2.0, 0.0), backward[:, i])
        assert visible[..., :-2].min() == 1


def test_warp_and_losses_import_neither_ray_nor_mlflow():
    code = (
        "import sys, h2s_dist.warp, h2s_dist.losses; "
        "bad = [m for m in ('ray', 'mlflow', 'fsspec') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
