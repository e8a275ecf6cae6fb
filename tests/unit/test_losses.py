"""Oracle tests of the unsupervised losses in h2s_dist.losses on tiny synthetic clips."""

import math

import pytest
import torch
import torch.nn.functional as F

from h2s_dist.losses import (
    UnsupervisedLossConfig,
    charbonnier,
    local_response_norm,
    reconstruction_images,
    smoothness_loss,
    ssim_loss,
    ssim_map,
    unsupervised_flow_loss,
)
from h2s_dist.warp import RAW_FLOW_SCALE

LEVEL_STRIDES = (32, 16, 8, 4, 2)


def smooth_texture(batch: int, height: int, width: int, cells: int = 8, seed: int = 0) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1]: random colours on a coarse grid, upsampled bicubically,
    so neighbouring pixels correlate (a warp has gradients to follow)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // cells + 3, width // cells + 3, generator=g)
    up = F.interpolate(coarse, scale_factor=cells, mode="bicubic", align_corners=False)
    return up[..., cells : cells + height, cells : cells + width].clamp(0, 1).contiguous()


def translating_clip(
    batch: int = 2, frames: int = 3, size: int = 64, shift: tuple[int, int] = (2, 0), seed: int = 0
) -> torch.Tensor:
    """(B, T, 3, size, size) in [0, 1]: a texture moving `shift` = (right, down) integer
    pixels per frame, so the flow t->t+1 (backward warping) is (u, v) = shift."""
    dx, dy = shift
    margin = (frames - 1) * max(abs(dx), abs(dy))
    big = smooth_texture(batch, size + 2 * margin, size + 2 * margin, seed=seed)
    # Content moving right means frame t+1 at x shows frame t at x - dx.
    crops = [big[..., margin - t * dy : margin - t * dy + size, margin - t * dx : margin - t * dx + size]
             for t in range(frames)]
    return torch.stack(crops, dim=1)


def constant_raw_flows(batch, frames, size, u_px, v_px, requires_grad=False):
    """MotionNet-shaped raw flows [flow6 ... flow2] for a constant full-resolution flow."""
    flows = []
    for s in LEVEL_STRIDES:
        raw = torch.zeros(batch, 2 * (frames - 1), size // s, size // s)
        raw[:, 0::2], raw[:, 1::2] = u_px / RAW_FLOW_SCALE, v_px / RAW_FLOW_SCALE
        flows.append(raw.requires_grad_(requires_grad))
    return flows


# --- Charbonnier and smoothness -------------------------------------------------


def test_charbonnier_at_zero_is_eps_to_the_two_alpha():
    for alpha in (0.3, 0.4, 0.5):
        value = charbonnier(torch.zeros(3), alpha, beta=255.0, eps=1e-3)
        torch.testing.assert_close(value, torch.full((3,), 1e-3 ** (2 * alpha)))


def test_charbonnier_prescales_by_beta():
    # beta * x = 1: ((1)^2 + eps^2)^0.5
    value = charbonnier(torch.tensor([1 / 255, -1 / 255]), 0.5, beta=255.0, eps=1e-3)
    torch.testing.assert_close(value, torch.full((2,), math.sqrt(1 + 1e-6)))


def test_smoothness_of_a_constant_flow_is_the_floor():
    # A nonzero constant: the last row/column must not be differenced against padding.
    flow = torch.full((2, 2, 5, 6), 3.7)
    torch.testing.assert_close(smoothness_loss(flow, 0.3), torch.tensor(1e-3**0.6))


def test_smoothness_of_a_unit_ramp_matches_the_hand_count():
    h, w = 5, 6
    flow = torch.zeros(1, 2, h, w)
    flow[:, 0] = torch.arange(w, dtype=torch.float32)  # u = x: du/dx = 1, all else 0
    n_dx, n_dy = 2 * h * (w - 1), 2 * (h - 1) * w
    ones = h * (w - 1)  # only u's x-differences are 1
    expected = (ones * (1 + 1e-6) ** 0.3 + (n_dx + n_dy - ones) * 1e-3**0.6) / (n_dx + n_dy)
    value = smoothness_loss(flow, 0.3)
    torch.testing.assert_close(value, torch.tensor(expected))
    assert value > smoothness_loss(torch.zeros_like(flow), 0.3)


# --- SSIM -----------------------------------------------------------------------


def test_ssim_of_identical_images_is_one_in_every_window():
    x = smooth_texture(2, 24, 20)  # 20 is not a multiple of 8: a cut window
    s = ssim_map(x, x.clone())
    assert s.shape == (2, 3, 3, 3)
    torch.testing.assert_close(s, torch.ones_like(s))
    assert ssim_loss(x, x.clone()).abs() < 1e-6


def test_ssim_of_an_image_and_its_negative_or_noise_is_lower():
    x = smooth_texture(1, 32, 32)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    same = ssim_map(x, x).mean()
    assert ssim_map(x, 1 - x).mean() < 0.5 * same
    assert ssim_map(x, noise).mean() < 0.5 * same
    assert ssim_loss(x, 1 - x) > ssim_loss(x, noise) > 0.5


def test_ssim_windows_do_not_overlap():
    # Changing only the second 8x8 block changes only the second window.
    x = smooth_texture(1, 8, 16)
    y = x.clone()
    y[..., :, 8:] = 1 - y[..., :, 8:]
    s = ssim_map(x, y)
    assert s.shape == (1, 3, 1, 2)
    torch.testing.assert_close(s[..., 0], torch.ones(1, 3, 1))
    assert (s[..., 1] < 0.5).all()


def test_ssim_of_a_level_smaller_than_the_window_is_one_window():
    x = smooth_texture(1, 7, 7)
    assert ssim_map(x, x).shape == (1, 3, 1, 1)
    assert ssim_map(torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2)).shape == (1, 1, 1, 1)


# --- The total loss -------------------------------------------------------------


def test_true_flow_of_a_translation_scores_lower_than_zero_and_opposite_flow():
    clip = translating_clip(shift=(2, 1))
    true_total, true_terms = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 2.0, 1.0))
    zero_total, zero_terms = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 0.0, 0.0))
    opp_total, opp_terms = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, -2.0, -1.0))
    assert true_total < zero_total < opp_total
    for key in ("pixel", "pixel/flow2", "pixel/flow3", "ssim/flow2", "ssim/flow3"):
        assert true_terms[key] < zero_terms[key] < opp_terms[key], key
    # Not the SSIM sum: SSIM has no border mask (nor in the release), and on the 2x2 and
    # 4x4 coarse levels of a 64 px clip the zeros a nonzero flow pulls in at the edge
    # outweigh a sub-pixel misalignment.


def test_true_flow_photometric_term_reaches_the_floor_where_the_shift_is_exact():
    # A 2 px shift is exactly 1 px at flow2 (half resolution, area-averaged frames).
    clip = translating_clip(shift=(2, 0))
    _, terms = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 2.0, 0.0))
    floor = 1e-3 ** (2 * 0.4)
    assert terms["pixel/flow2"] < 1.01 * floor
    # Constant flows are perfectly smooth at every level.
    for name in ("flow6", "flow5", "flow4", "flow3", "flow2"):
        torch.testing.assert_close(terms[f"smooth/{name}"], torch.tensor(1e-3**0.6))


def test_terms_have_the_expected_keys_and_sum_to_the_total():
    clip = translating_clip()
    total, terms = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 1.0, 0.0))
    levels = ("flow6", "flow5", "flow4", "flow3", "flow2")
    expected = {"pixel", "smooth", "ssim"} | {f"{t}/{n}" for t in ("pixel", "smooth", "ssim") for n in levels}
    assert set(terms) == expected
    assert all(v.dim() == 0 and not v.requires_grad for v in terms.values())
    torch.testing.assert_close(terms["pixel"] + terms["smooth"] + terms["ssim"], total.detach())
    ssim_weights = (0.16, 0.08, 0.04, 0.02, 0.01)
    weighted = sum(w * terms[f"ssim/{n}"] for w, n in zip(ssim_weights, levels))
    torch.testing.assert_close(terms["ssim"], weighted)


def test_gradient_reaches_the_flows_but_not_the_frames():
    clip = translating_clip().requires_grad_()
    flows = constant_raw_flows(2, 3, 64, 0.5, 0.5, requires_grad=True)
    total, _ = unsupervised_flow_loss(clip, flows)
    total.backward()
    assert clip.grad is None
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in flows)


def test_finetuning_makes_the_ssim_weights_ten_times_smaller():
    clip = translating_clip()
    flows = constant_raw_flows(2, 3, 64, 0.0, 0.0)
    _, pre = unsupervised_flow_loss(clip, flows, UnsupervisedLossConfig.pretraining())
    _, fine = unsupervised_flow_loss(clip, flows, UnsupervisedLossConfig.finetuning())
    torch.testing.assert_close(fine["ssim"], 0.1 * pre["ssim"])
    torch.testing.assert_close(fine["pixel"], pre["pixel"])
    assert UnsupervisedLossConfig.finetuning().ssim_weight_scale == 0.1


def test_smoothness_weight_scales_only_the_smoothness_term():
    clip = translating_clip()
    flows = constant_raw_flows(2, 3, 64, 1.0, 0.0)
    _, one = unsupervised_flow_loss(clip, flows)
    _, three = unsupervised_flow_loss(clip, flows, UnsupervisedLossConfig(smoothness_weight=3.0))
    torch.testing.assert_close(three["smooth"], 3 * one["smooth"])
    torch.testing.assert_close(three["pixel"], one["pixel"])


def test_lrn_option_changes_the_images_and_keeps_the_true_flow_best():
    clip = translating_clip(shift=(2, 0))
    normed = local_response_norm(clip)
    assert normed.shape == clip.shape and not torch.allclose(normed, clip)
    cfg = UnsupervisedLossConfig(use_lrn=True)
    true_total, _ = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 2.0, 0.0), cfg)
    zero_total, _ = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 0.0, 0.0), cfg)
    assert true_total < zero_total


def test_wrong_number_of_levels_or_channels_is_a_clear_error():
    clip = translating_clip()
    flows = constant_raw_flows(2, 3, 64, 0.0, 0.0)
    with pytest.raises(ValueError, match="flow levels"):
        unsupervised_flow_loss(clip, flows[1:])
    with pytest.raises(ValueError, match="for 3 frames"):
        unsupervised_flow_loss(clip, [f[:, :2] for f in flows])
    with pytest.raises(ValueError, match="one value per flow level"):
        UnsupervisedLossConfig(ssim_level_weights=(0.1, 0.2))


def test_reconstruction_images_rebuild_each_frame_from_the_next():
    clip = translating_clip(frames=3, shift=(2, 0))
    flow2 = constant_raw_flows(2, 3, 64, 2.0, 0.0)[-1]
    rebuilt = reconstruction_images(clip, flow2)
    assert rebuilt.shape == (2, 2, 3, 64, 64)
    torch.testing.assert_close(rebuilt[..., :-2], clip[:, :-1, ..., :-2], atol=1e-5, rtol=0)


def test_lrn_matches_the_caffe_formula_over_all_three_channels():
    frames01 = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(3))
    centred = frames01 - torch.tensor([123.0, 117.0, 104.0]).view(3, 1, 1) / 255.0
    expected = centred / (1.0 + (centred**2).sum(dim=1, keepdim=True) / 9.0) ** 0.7
    torch.testing.assert_close(local_response_norm(frames01), expected)


def test_a_32_pixel_clip_with_a_one_pixel_coarsest_level_gives_a_finite_loss():
    clip = translating_clip(batch=1, frames=2, size=32, shift=(1, 0))
    flows = constant_raw_flows(1, 2, 32, 1.0, 0.0, requires_grad=True)
    assert flows[0].shape[-2:] == (1, 1)
    total, terms = unsupervised_flow_loss(clip, flows)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    assert all(torch.isfinite(f.grad).all() for f in flows)
