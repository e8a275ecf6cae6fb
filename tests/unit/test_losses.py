"""Oracle tests of the unsupervised losses in h2s_dist.losses on tiny synthetic clips.

The release's normalisation is checked against its layers written out by hand
(`release_loss_by_hand`): explicit masks, sums, window counts and the division by N.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from h2s_dist.losses import (
    UnsupervisedLossConfig,
    census_distance,
    census_transform,
    charbonnier,
    edge_weights,
    local_response_norm,
    num_ssim_windows,
    reconstruction_images,
    robust_penalty,
    smoothness_loss,
    ssim_loss,
    ssim_map,
    term_weights,
    unsupervised_flow_loss,
)
from h2s_dist.warp import RAW_FLOW_SCALE, backward_warp, forward_backward_visible

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
    # Release form: SSIM level k weighs w_k x C x W_k times its mean, C = 3 x 10 pairs (the
    # release's 11-frame clips, whatever ours: this one has 3 frames), W_k = windows of the 2,
    # 4, 8, 16, 32 px levels of a 64 px clip: 1, 1, 1, 2x2, 4x4.
    ssim_weights, windows = (0.16, 0.08, 0.04, 0.02, 0.01), (1, 1, 1, 4, 16)
    weighted = sum(w * 30 * n * terms[f"ssim/{name}"] for w, n, name in zip(ssim_weights, windows, levels))
    torch.testing.assert_close(terms["ssim"], weighted)
    torch.testing.assert_close(terms["pixel"], sum(terms[f"pixel/{n}"] for n in levels) / 16)
    torch.testing.assert_close(terms["smooth"], sum(terms[f"smooth/{n}"] for n in levels) * 4 / 3 / 16)


def test_gradient_reaches_the_flows_but_not_the_frames():
    clip = translating_clip().requires_grad_()
    flows = constant_raw_flows(2, 3, 64, 0.5, 0.5, requires_grad=True)
    total, _ = unsupervised_flow_loss(clip, flows)
    total.backward()
    assert clip.grad is None
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in flows)


def test_finetuning_makes_the_ssim_weights_ten_times_smaller_at_the_releases_batch_of_8():
    clip = translating_clip()
    flows = constant_raw_flows(2, 3, 64, 0.0, 0.0)
    _, pre = unsupervised_flow_loss(clip, flows, UnsupervisedLossConfig.pretraining())
    _, fine = unsupervised_flow_loss(clip, flows, UnsupervisedLossConfig.finetuning())
    torch.testing.assert_close(fine["ssim"], 0.1 * pre["ssim"])  # a per-sample sum: no N in it
    torch.testing.assert_close(fine["pixel"], 2 * pre["pixel"])  # mean / 8 instead of mean / 16
    torch.testing.assert_close(fine["smooth"], 2 * pre["smooth"])
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


# --- The release's normalisation, by hand ----------------------------------------

TWO_LEVELS = dict(pixel_level_weights=(1.0, 1.0), smoothness_level_weights=(1.0, 1.0), ssim_level_weights=(0.02, 0.01))


def release_loss_by_hand(frames01: torch.Tensor, raw_levels: list[torch.Tensor], n: int,
                         ssim_weights: tuple[float, ...]) -> torch.Tensor:
    """The release's loss layers on a batch of exactly n samples, written out.

    Per level: frames shrunk by average pooling, flow i warps frame i+1 onto frame i; the
    mask blob has all C = 3(T-1) channels and a 10% border;
      photometric  sum(mask * rho) / (n * sum(mask)), rho = ((255 d)^2 + eps^2)^0.4;
      smoothness   U and V as two layers: blob = [dx of each flow, dy of each flow]
                   (2(T-1) channels, last column / row zeroed by the flow border mask),
                   sum(flow_border * mask * rho) / (n * sum(mask)), rho = (d^2 + eps^2)^0.3;
      SSIM         sum over batch, C channels and windows of (1 - SSIM), / n.
    (The release also masks the smoothness blob with the 30-channel mask's first channels:
    all one spatial mask, so only the count in the denominator differs from the blob's.)
    """
    b, t, _, size, _ = frames01.shape
    assert b == n
    c = 3 * (t - 1)
    total = torch.zeros(())
    for raw, w_ssim in zip(raw_levels, ssim_weights):
        h = raw.shape[-1]
        stride = size // h
        level = F.avg_pool2d(frames01.flatten(0, 1), stride).view(b, t, 3, h, h)
        flow = (raw * RAW_FLOW_SCALE / stride).view(b, t - 1, 2, h, h)
        target = level[:, :-1]
        warped = torch.stack([backward_warp(level[:, i + 1], flow[:, i]) for i in range(t - 1)], 1)
        border = int(0.1 * h + 0.5)
        mask = torch.zeros(b, c, h, h)
        mask[..., border : h - border, border : h - border] = 1
        rho = ((255 * (target - warped)).reshape(b, c, h, h) ** 2 + 1e-6) ** 0.4
        pixel = (mask * rho).sum() / (n * mask.sum())
        smooth = torch.zeros(())
        for component in (0, 1):
            f = flow[:, :, component]
            dx, dy = torch.zeros_like(f), torch.zeros_like(f)
            dx[..., :, :-1] = f[..., :, 1:] - f[..., :, :-1]
            dy[..., :-1, :] = f[..., 1:, :] - f[..., :-1, :]
            flow_border = torch.ones(b, 2 * (t - 1), h, h)
            flow_border[:, : t - 1, :, -1] = 0
            flow_border[:, t - 1 :, -1, :] = 0
            rho_s = (torch.cat([dx, dy], 1) ** 2 + 1e-6) ** 0.3
            smooth = smooth + (flow_border * mask[:, : 2 * (t - 1)] * rho_s).sum() / (n * mask.sum())
        ssim = (1 - ssim_map(warped.reshape(b, c, h, h), target.reshape(b, c, h, h))).sum() / n
        total = total + pixel + smooth + w_ssim * ssim
    return total


def random_raw_flows(batch: int, frames: int, sizes: tuple[int, ...], scale: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, 2 * (frames - 1), s, s, generator=g) for s in sizes]


def test_release_form_at_a_batch_of_n_is_the_release_layers_by_hand():
    # Levels of 8 and 16 px (borders 1 and 2 px, 1 and 4 SSIM windows), 3 frames, N = B = 2.
    clip = translating_clip(batch=2, frames=3, size=32, shift=(1, 1))
    flows = random_raw_flows(2, 3, (8, 16))
    config = UnsupervisedLossConfig(reference_batch_size=2, reference_num_frames=3, **TWO_LEVELS)
    total, _ = unsupervised_flow_loss(clip, flows, config)
    torch.testing.assert_close(total, release_loss_by_hand(clip, flows, 2, (0.02, 0.01)))


def test_release_form_weighs_each_pair_as_in_the_release_whatever_our_clip_length():
    # T is the release's 11 frames, not ours: SSIM's per-sample sum counts 30 channels, so a
    # 3-frame clip's SSIM weighs what the release's layers give it x 30 / 6, the others as they
    # are; at reference_num_frames 3 it is the release's layers on this clip exactly.
    clip = translating_clip(batch=2, frames=3, size=32, shift=(1, 1))
    flows = random_raw_flows(2, 3, (8, 16))
    as_is = UnsupervisedLossConfig(reference_batch_size=2, reference_num_frames=3, **TWO_LEVELS)
    _, clip_terms = unsupervised_flow_loss(clip, flows, as_is)
    total, terms = unsupervised_flow_loss(clip, flows, dataclasses.replace(as_is, reference_num_frames=11))
    torch.testing.assert_close(terms["ssim"], clip_terms["ssim"] * 5)
    torch.testing.assert_close(terms["pixel"], clip_terms["pixel"])
    torch.testing.assert_close(terms["smooth"], clip_terms["smooth"])
    torch.testing.assert_close(total, terms["pixel"] + terms["smooth"] + terms["ssim"])
    assert UnsupervisedLossConfig().reference_num_frames == 11
    with pytest.raises(ValueError, match="reference_num_frames"):
        UnsupervisedLossConfig(reference_num_frames=1)


def test_release_form_equals_the_release_on_16_samples_whatever_our_batch():
    # N is the release's batch (16), not ours: 2 samples score what the release computes
    # for these 2 repeated to 16, and so do the same samples repeated to 4.
    clip = translating_clip(batch=2, frames=3, size=32, shift=(1, 1))
    flows = random_raw_flows(2, 3, (8, 16))
    config = UnsupervisedLossConfig(reference_num_frames=3, **TWO_LEVELS)
    assert config.reference_batch_size == 16
    total, _ = unsupervised_flow_loss(clip, flows, config)
    by_hand = release_loss_by_hand(clip.repeat(8, 1, 1, 1, 1), [f.repeat(8, 1, 1, 1) for f in flows], 16, (0.02, 0.01))
    torch.testing.assert_close(total, by_hand)
    total4, _ = unsupervised_flow_loss(clip.repeat(2, 1, 1, 1, 1), [f.repeat(2, 1, 1, 1) for f in flows], config)
    torch.testing.assert_close(total4, total)


def test_ssim_windows_per_level_of_a_224_crop():
    assert [num_ssim_windows(s, s) for s in (7, 14, 28, 56, 112)] == [1, 4, 16, 49, 196]
    assert [num_ssim_windows(s, s) for s in (2, 4, 8, 16, 32)] == [1, 1, 1, 4, 16]
    assert num_ssim_windows(20, 9) == 3 * 2  # cut windows count


def test_mean_form_weights_are_the_papers_mean_equivalents_at_224():
    config = UnsupervisedLossConfig(normalisation="mean")
    weights = [term_weights(config, k, 30, num_ssim_windows(s, s)) for k, s in enumerate((7, 14, 28, 56, 112))]
    for got, want in zip([w["ssim"] for w in weights], (76.8, 153.6, 307.2, 470.4, 940.8)):
        assert got == pytest.approx(want)
    assert all(w["pixel"] == 1.0 and w["smooth"] == pytest.approx(4 / 3) for w in weights)


def test_mean_form_is_n_times_the_release_form_term_by_term():
    clip = translating_clip(shift=(2, 1))
    flows = constant_raw_flows(2, 3, 64, 0.7, 0.2)
    release_total, release = unsupervised_flow_loss(clip, flows)
    mean_total, mean = unsupervised_flow_loss(clip, flows, UnsupervisedLossConfig(normalisation="mean"))
    torch.testing.assert_close(mean_total, 16 * release_total)
    for key in ("pixel", "smooth", "ssim"):
        torch.testing.assert_close(mean[key], 16 * release[key])
        torch.testing.assert_close(mean[f"{key}/flow2"], release[f"{key}/flow2"])  # plain means either way


def test_finetuning_balance_against_the_action_loss_is_the_releases():
    # The release at batch 8, 224 crops, 11 frames, added to the mean cross-entropy:
    # photometric 1/8, smoothness 1/6, SSIM 0.48 / 0.96 / 1.92 / 2.94 / 5.88.
    config = UnsupervisedLossConfig.finetuning()
    weights = [term_weights(config, k, 30, num_ssim_windows(s, s)) for k, s in enumerate((7, 14, 28, 56, 112))]
    for got, want in zip([w["ssim"] for w in weights], (0.48, 0.96, 1.92, 2.94, 5.88)):
        assert got == pytest.approx(want)
    assert all(w["pixel"] == pytest.approx(1 / 8) and w["smooth"] == pytest.approx(1 / 6) for w in weights)


def test_specs_build_the_releases_pretraining_and_finetuning_configs():
    from h2s_dist.specs.common import UnsupLossSpec
    from h2s_dist.specs.training import FinetuneSpec
    from h2s_dist.train.builders import unsup_loss_config

    assert unsup_loss_config(UnsupLossSpec(), finetuning=False) == UnsupervisedLossConfig.pretraining()
    assert unsup_loss_config(UnsupLossSpec(), finetuning=True) == UnsupervisedLossConfig.finetuning()
    assert FinetuneSpec().unsup_weight == 1.0  # the release adds the losses as they are
    custom = unsup_loss_config(
        UnsupLossSpec(normalisation="mean", reference_batch_size=4, reference_num_frames=2, photometric="census",
                      occlusion="forward_backward", smoothness="edge_aware_second", edge_weight=10.0,
                      ssim_weight_scale=2.0), finetuning=True)
    assert (custom.normalisation, custom.reference_batch_size, custom.reference_num_frames, custom.photometric,
            custom.occlusion, custom.smoothness, custom.edge_weight) == (
        "mean", 4, 2, "census", "forward_backward", "edge_aware_second", 10.0)
    assert custom.ssim_weight_scale == pytest.approx(0.2)


def test_smoothness_is_border_masked():
    # An 8 px level with its 1 px border masked: differences belong to their left / upper
    # pixel, so the kept ones are those of pixels 1..6, and they read pixels 1..7.
    flow = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8, 8)
    mask[1:7, 1:7] = 1
    kept_x = charbonnier(flow[..., :, 1:] - flow[..., :, :-1], 0.3, 1.0)[..., 1:7, 1:7]
    kept_y = charbonnier(flow[..., 1:, :] - flow[..., :-1, :], 0.3, 1.0)[..., 1:7, 1:7]
    expected = (kept_x.sum() + kept_y.sum()) / (kept_x.numel() + kept_y.numel())
    torch.testing.assert_close(smoothness_loss(flow, 0.3, mask=mask), expected)
    # No kept difference reads row 0 or column 0: wild values there change nothing.
    wild = flow.clone()
    wild[..., 0, :], wild[..., :, 0] = 5.0, -3.0
    torch.testing.assert_close(smoothness_loss(wild, 0.3, mask=mask), smoothness_loss(flow, 0.3, mask=mask))
    assert smoothness_loss(wild, 0.3) > smoothness_loss(flow, 0.3)
    # In the loss: a flow that is wild only on the border of every level is at the floor.
    clip = translating_clip()
    flows = constant_raw_flows(2, 3, 64, 1.0, 0.0)
    for raw in flows[2:]:  # 8, 16, 32 px levels: borders 1, 2, 3
        raw[..., 0, :], raw[..., :, 0] = 0.7, -0.4
    _, terms = unsupervised_flow_loss(clip, flows)
    for name in ("flow4", "flow3", "flow2"):
        torch.testing.assert_close(terms[f"smooth/{name}"], torch.tensor(1e-3**0.6))


def test_ssim_is_the_larger_share_at_zero_flow_on_a_moving_224_texture():
    # The release's balance: SSIM about 2.8x the photometric term (11 frames, 1 px/frame);
    # a plain mean of every term with the nominal weights makes it ~1e-4 of the loss.
    clip = translating_clip(batch=1, frames=11, size=224, shift=(1, 0))
    flows = [torch.zeros(1, 20, 224 // s, 224 // s) for s in LEVEL_STRIDES]
    total, terms = unsupervised_flow_loss(clip, flows)
    ratio = float(terms["ssim"] / terms["pixel"])
    assert 2.5 < ratio < 3.2, ratio
    assert float(terms["ssim"] / total) > 0.7
    levels = ("flow6", "flow5", "flow4", "flow3", "flow2")
    nominal = {"pixel": sum(terms[f"pixel/{n}"] for n in levels),
               "smooth": sum(terms[f"smooth/{n}"] for n in levels),
               "ssim": sum(w * terms[f"ssim/{n}"] for w, n in zip((0.16, 0.08, 0.04, 0.02, 0.01), levels))}
    assert float(nominal["ssim"] / sum(nominal.values())) < 5e-4


def test_loss_under_bf16_autocast_matches_fp32():
    clip = translating_clip(shift=(2, 1))
    flows = [f.to(torch.bfloat16) for f in random_raw_flows(2, 3, (2, 4, 8, 16, 32), scale=0.1)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total_bf16, terms_bf16 = unsupervised_flow_loss(clip, flows)
        ssim_in_bf16 = ssim_loss(clip[:, 0], clip[:, 1])  # what the guard prevents
    total, terms = unsupervised_flow_loss(clip, [f.float() for f in flows])
    assert total_bf16.dtype == torch.float32 and terms_bf16["ssim"].dtype == torch.float32
    torch.testing.assert_close(total_bf16, total, rtol=1e-5, atol=0)
    torch.testing.assert_close(terms_bf16["ssim"], terms["ssim"], rtol=1e-5, atol=0)
    assert abs(float(ssim_in_bf16) - float(ssim_loss(clip[:, 0], clip[:, 1]))) > 1e-3


# --- Census photometric term -----------------------------------------------------


def test_census_transform_of_a_3x3_patch_by_hand():
    gray = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0], [70.0, 80.0, 90.0]]) / 255.0
    image = gray.expand(1, 3, 3, 3)  # equal RGB: luma = the value (weights sum to 0.9999)
    out = census_transform(image, patch_size=3)[0, :, 1, 1]  # the centre's 9 neighbours
    d = (gray.flatten() - gray[1, 1]) * 255.0 * 0.9999
    torch.testing.assert_close(out, d / torch.sqrt(0.81 + d**2), rtol=1e-5, atol=1e-6)
    assert out[4] == 0  # the centre against itself


def test_census_distance_of_an_image_to_itself_is_zero():
    image = smooth_texture(2, 12, 12)
    assert census_distance(image, image.clone()).abs().max() == 0
    torch.testing.assert_close(robust_penalty(census_distance(image, image)), torch.full((2, 1, 12, 12), 0.01**0.4))


def test_census_ignores_a_brightness_offset_and_nearly_a_gain_where_charbonnier_does_not():
    image = smooth_texture(2, 24, 24)
    shifted = torch.roll(image, 1, dims=-1)  # a one-pixel misalignment, for scale

    def both(other):
        return census_distance(image, other).mean(), charbonnier(image - other, 0.4, 255.0).mean()

    census_shift, charb_shift = both(shifted)
    census_offset, charb_offset = both(image + 0.1)
    census_gain, charb_gain = both(1.5 * image)
    assert census_offset < 1e-6 and charb_offset > charb_shift
    # The soft census d / sqrt(0.81 + d^2) is only nearly scale-free (exactly for |d| >> 1).
    assert census_gain < 0.15 * census_shift and charb_gain > charb_shift


def test_census_true_flow_of_a_translation_scores_lower_than_zero_flow():
    clip = translating_clip(shift=(2, 1))
    config = UnsupervisedLossConfig(photometric="census")
    true_total, true_terms = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 2.0, 1.0), config)
    zero_total, zero_terms = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 0.0, 0.0), config)
    assert true_total < zero_total
    for key in ("pixel", "pixel/flow2", "pixel/flow3", "pixel/flow4"):
        assert true_terms[key] < zero_terms[key], key
    # A 2 px shift is exactly 1 px at flow2: a match up to the census patches that reach
    # the column the warp pulls in from outside.
    clip = translating_clip(shift=(2, 0))
    _, exact = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 2.0, 0.0), config)
    _, zero = unsupervised_flow_loss(clip, constant_raw_flows(2, 3, 64, 0.0, 0.0), config)
    assert exact["pixel/flow2"] < 0.15 * zero["pixel/flow2"]


# --- Edge-aware smoothness -------------------------------------------------------


def linear_flow(h: int = 9, w: int = 10) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([0.5 * xs + 0.25 * ys, -0.3 * xs + 0.1], 0).unsqueeze(0)  # (1, 2, h, w)


def test_a_linear_flow_has_no_second_order_smoothness_but_first_order():
    flow, floor = linear_flow(), torch.tensor(1e-3**0.6)
    torch.testing.assert_close(smoothness_loss(flow, 0.3, order=2), floor)
    assert smoothness_loss(flow, 0.3, order=1) > 10 * floor
    flat = torch.full((1, 3, 9, 10), 0.5)  # edge-aware on a flat image: weights 1
    torch.testing.assert_close(smoothness_loss(flow, 0.3, order=2, image=flat, edge_weight=150.0), floor)
    torch.testing.assert_close(smoothness_loss(flow, 0.3, order=1, image=flat, edge_weight=150.0),
                               smoothness_loss(flow, 0.3, order=1))


def test_edge_weights_by_hand():
    image = torch.full((1, 3, 2, 4), 0.2)
    image[..., 2:] = 0.6  # a vertical edge between columns 1 and 2, in every channel
    first = edge_weights(image, order=1, dim=-1, edge_weight=10.0)
    torch.testing.assert_close(first[0, 0], torch.tensor([[1.0, math.exp(-4.0), 1.0]] * 2))
    second = edge_weights(image, order=2, dim=-1, edge_weight=10.0)  # I[i+2] - I[i]
    torch.testing.assert_close(second[0, 0], torch.tensor([[math.exp(-4.0), math.exp(-4.0)]] * 2))
    torch.testing.assert_close(edge_weights(image, order=1, dim=-2, edge_weight=10.0), torch.ones(1, 1, 1, 4))


def test_edge_aware_penalty_is_lower_where_the_flow_changes_at_an_image_edge():
    image = torch.full((1, 3, 6, 8), 0.2)
    image[..., 4:] = 0.8
    flow = torch.zeros(1, 2, 6, 8)
    flow[:, 0, :, 4:] = 3.0  # the flow jumps where the image does
    for order in (1, 2):
        plain = smoothness_loss(flow, 0.3, order=order)
        aware = smoothness_loss(flow, 0.3, order=order, image=image, edge_weight=150.0)
        assert aware < 0.5 * plain, order
    moved = torch.zeros(1, 2, 6, 8)
    moved[:, 0, :, 2:] = 3.0  # the same jump away from the edge: plain cannot tell them apart
    torch.testing.assert_close(smoothness_loss(moved, 0.3), smoothness_loss(flow, 0.3))
    # Aligned: only the Charbonnier floor of the flat differences is left.
    assert smoothness_loss(flow, 0.3, image=image, edge_weight=150.0) < 0.25 * smoothness_loss(
        moved, 0.3, image=image, edge_weight=150.0)


def test_edge_aware_second_order_option_costs_a_linear_flow_no_more_than_a_constant_one():
    # On a texture the edge weights scale even the Charbonnier floor, so compare with a
    # constant flow: second order cannot tell them apart, first order can.
    clip = translating_clip()

    def flows(slope):
        out = []
        for s in LEVEL_STRIDES:
            n = 64 // s
            raw = torch.full((2, 4, n, n), 0.05)
            raw[:, 0::2] += slope * torch.arange(n, dtype=torch.float32)  # u linear in x
            out.append(raw)
        return out

    second, first = ([unsupervised_flow_loss(clip, flows(a), UnsupervisedLossConfig(smoothness=kind))[1]
                      for a in (0.0, 0.01)] for kind in ("edge_aware_second", "edge_aware_first"))
    for name in ("flow4", "flow3", "flow2"):
        key = f"smooth/{name}"
        torch.testing.assert_close(second[1][key], second[0][key])
        assert first[1][key] > 2 * first[0][key]


# --- Forward-backward occlusion --------------------------------------------------


def single_level(**fields) -> UnsupervisedLossConfig:
    return UnsupervisedLossConfig(pixel_level_weights=(1.0,), smoothness_level_weights=(1.0,),
                                  ssim_level_weights=(0.01,), **fields)


def test_occlusion_needs_backward_flows_and_nothing_else_takes_them():
    clip = translating_clip()
    flows = constant_raw_flows(2, 3, 64, 0.0, 0.0)
    with pytest.raises(ValueError, match="time-reversed clip"):
        unsupervised_flow_loss(clip, flows, UnsupervisedLossConfig(occlusion="forward_backward"))
    with pytest.raises(ValueError, match="time-reversed clip"):
        unsupervised_flow_loss(clip, flows, UnsupervisedLossConfig(), backward_flows=flows)


def test_consistent_backward_flows_mask_nothing():
    # 1 px/frame right: the reversed clip moves 1 px left. At most 0.5 px per level: all
    # visible (see test_warp), so the loss is the loss without the mask.
    clip = translating_clip(shift=(1, 0))
    forward = constant_raw_flows(2, 3, 64, 1.0, 0.0)
    backward = constant_raw_flows(2, 3, 64, -1.0, 0.0)
    total, terms = unsupervised_flow_loss(clip, forward, UnsupervisedLossConfig(occlusion="forward_backward"), backward)
    plain_total, plain = unsupervised_flow_loss(clip, forward)
    torch.testing.assert_close(total, plain_total)
    assert all(float(terms[f"occluded/{n}"]) == 0 for n in ("flow6", "flow5", "flow4", "flow3", "flow2"))


def test_occluded_pixels_leave_the_photometric_mean_by_hand():
    # One 8 px level of a 16 px clip of 3 frames moving 2 px right (1 px at the level).
    clip = translating_clip(batch=1, frames=3, size=16, shift=(2, 0))
    forward = [torch.zeros(1, 4, 8, 8)]
    forward[0][:, 0::2] = 2.0 / RAW_FLOW_SCALE
    reversed_raw = torch.zeros(1, 4, 8, 8)
    reversed_raw[:, 0::2] = -2.0 / RAW_FLOW_SCALE
    reversed_raw[:, 0, 2:5, 3:6] = 2.0 / RAW_FLOW_SCALE  # reversed flow 0 = backward flow of pair 1
    config = single_level(occlusion="forward_backward")
    _, terms = unsupervised_flow_loss(clip, forward, config, [reversed_raw])

    level = F.avg_pool2d(clip.flatten(0, 1), 2).view(1, 3, 3, 8, 8)
    fw = torch.zeros(1, 2, 8, 8)
    fw[:, 0] = 1.0
    bw_consistent, bw_pair1 = torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8)
    bw_consistent[:, 0], bw_pair1[:, 0] = -1.0, -1.0
    bw_pair1[:, 0, 2:5, 3:6] = 1.0
    border = torch.zeros(8, 8)
    border[1:7, 1:7] = 1
    num, den = 0.0, 0.0
    for i, bw in enumerate((bw_consistent, bw_pair1)):
        visible = forward_backward_visible(fw, bw)
        if i == 1:
            assert visible[0, 0, 2:5, 2:5].max() == 0  # x + 1 lands in columns 3-5
        mask = border * visible
        rho = charbonnier(level[:, i] - backward_warp(level[:, i + 1], fw), 0.4, 255.0)
        num, den = num + (rho * mask).sum(), den + 3 * mask.sum()
    torch.testing.assert_close(terms["pixel/flow2"], num / den)
    torch.testing.assert_close(terms["occluded/flow2"], torch.tensor((2 * 8 + 9) / (2 * 64)))


def _levels(batch: int, channels: int, size: int, value_px: tuple[float, float] = (0.0, 0.0)) -> list[torch.Tensor]:
    """Raw MotionNet-like outputs at strides 32 ... 2 of a size x size input, a constant flow in px."""
    flows = []
    for stride in (32, 16, 8, 4, 2):
        raw = torch.zeros(batch, channels, size // stride, size // stride)
        raw[:, 0::2], raw[:, 1::2] = value_px[0] / 20.0, value_px[1] / 20.0
        flows.append(raw.requires_grad_())
    return flows


def test_proxy_epe_of_a_constant_3_4_px_proxy_against_zero_flow_is_5_at_every_level():
    from h2s_dist.losses import proxy_flow_loss

    proxy = torch.zeros(2, 4, 64, 64)
    proxy[:, 0::2], proxy[:, 1::2] = 3.0, 4.0
    total, terms = proxy_flow_loss(_levels(2, 4, 64), proxy)
    assert float(total) == pytest.approx(5.0, abs=1e-5)
    assert all(float(terms[f"proxy_epe/flow{k}"]) == pytest.approx(5.0, abs=1e-5) for k in range(2, 7))


def test_proxy_epe_is_zero_when_motionnet_predicts_the_proxy_and_its_gradient_points_to_it():
    from h2s_dist.losses import proxy_flow_loss

    proxy = torch.zeros(1, 2, 64, 64)
    proxy[:, 0], proxy[:, 1] = -2.0, 1.5
    total, _ = proxy_flow_loss(_levels(1, 2, 64, (-2.0, 1.5)), proxy)
    assert float(total) == pytest.approx(0.0, abs=1e-4)
    flows = _levels(1, 2, 64)
    proxy_flow_loss(flows, proxy)[0].backward()
    grad = flows[-1].grad  # descending it moves u towards -2, v towards +1.5
    assert (grad[:, 0] > 0).all() and (grad[:, 1] < 0).all()


def test_proxy_is_averaged_over_each_levels_area():
    from h2s_dist.losses import proxy_flow_loss

    # u = 4 px on the left half, 0 on the right: at flow6 (2x2 of a 64 input) each cell sees its own half
    proxy = torch.zeros(1, 2, 64, 64)
    proxy[:, 0, :, :32] = 4.0
    flows = _levels(1, 2, 64)
    flows[0].data[:, 0, :, 0] = 4.0 / 20.0
    _, terms = proxy_flow_loss(flows, proxy)
    assert float(terms["proxy_epe/flow6"]) == pytest.approx(0.0, abs=1e-4)
    assert float(terms["proxy_epe/flow2"]) == pytest.approx(2.0, abs=1e-4)
