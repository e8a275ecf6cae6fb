"""Oracle tests for h2s_dist.data.transforms on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from h2s_dist.data import transforms as T
from h2s_dist.frames import MEAN_RGB_255


def _ramp(num_frames: int = 2, height: int = 6, width: int = 8) -> np.ndarray:
    """Frames whose pixel value encodes (t, y, x): channel 0 = y, 1 = x, 2 = t."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([y, x, t], axis=-1).astype(np.uint8)


def test_eval_window_starts_follow_paper_step_for_100_frames():
    starts = T.eval_window_starts(100, clip_len=11, num_windows=25)
    assert starts == [3 * i for i in range(25)]  # step = floor(90 / 25) = 3
    assert starts[-1] + 11 <= 100


def test_eval_window_starts_for_exactly_one_window_repeat_it():
    assert T.eval_window_starts(11) == [0] * 25


def test_eval_window_starts_for_short_video_spread_over_valid_range():
    starts = T.eval_window_starts(30)  # step = floor(20 / 25) = 0
    assert len(starts) == 25 and starts[0] == 0 and starts[-1] == 19
    assert starts == sorted(starts)


def test_eval_window_starts_shorter_than_clip_are_zero():
    assert T.eval_window_starts(5) == [0] * 25


def test_random_window_start_stays_in_valid_range_and_hits_both_ends():
    rng = np.random.default_rng(0)
    starts = {T.random_window_start(15, 11, rng) for _ in range(300)}
    assert starts == {0, 1, 2, 3, 4}
    assert T.random_window_start(5, 11, rng) == 0


def test_pad_to_length_repeats_last_frame():
    frames = _ramp(num_frames=3)
    padded = T.pad_to_length(frames, 5)
    assert padded.shape[0] == 5
    np.testing.assert_array_equal(padded[3], frames[2])
    np.testing.assert_array_equal(padded[4], frames[2])
    assert T.pad_to_length(frames, 2).shape[0] == 2


def test_crop_offsets_are_corners_then_centre():
    assert T.crop_offsets(6, 8, 4) == [(0, 0), (0, 4), (2, 0), (2, 4), (1, 2)]


def test_crop_larger_than_frame_is_a_value_error():
    with pytest.raises(ValueError, match="crop_size"):
        T.crop_offsets(6, 8, 7)


def test_ten_crops_take_pixels_from_the_named_corners():
    frames = _ramp(height=6, width=8)
    crops, flipped = T.ten_crops(frames, 4)
    assert crops.shape == (10, 2, 4, 4, 3)
    assert flipped.tolist() == [False] * 5 + [True] * 5
    # top-left pixel (y, x) of each unflipped crop is its offset
    for i, (y0, x0) in enumerate([(0, 0), (0, 4), (2, 0), (2, 4), (1, 2)]):
        assert tuple(crops[i, 0, 0, 0, :2]) == (y0, x0)
    # crop i + 5 is crop i mirrored: its top-left pixel is crop i's top-right
    np.testing.assert_array_equal(crops[5 + 1, :, :, 0], crops[1, :, :, -1])


def test_horizontal_flip_twice_is_identity_and_mirrors_x():
    frames = _ramp()
    once = T.horizontal_flip(frames)
    assert once[0, 0, 0, 1] == 7  # column 0 now holds what was column W - 1
    np.testing.assert_array_equal(T.horizontal_flip(once), frames)


def test_multiscale_corner_crop_at_scale_1_is_the_square_resized():
    frames = _ramp(height=6, width=8)
    rng = np.random.default_rng(1)
    out = T.multiscale_corner_crop(frames, 6, rng, scales=(1.0,))
    assert out.shape == (2, 6, 6, 3) and out.dtype == np.uint8
    # side = min(H, W) = 6 equals crop_size: no resampling, one of the 5 exact crops
    candidates = [frames[:, y0 : y0 + 6, x0 : x0 + 6] for y0, x0 in T.crop_offsets(6, 8, 6)]
    assert any(np.array_equal(out, c) for c in candidates)


def test_multiscale_corner_crop_draws_every_position_and_scale():
    frames = _ramp(num_frames=1, height=16, width=16)
    oracle = []  # the 15 possible outputs: 3 sides x 5 positions, each resized to 12
    for side in (16, 14, 12):
        for y0, x0 in T.crop_offsets(16, 16, side):
            oracle.append(T.resize_frames(frames[:, y0 : y0 + side, x0 : x0 + side], (12, 12)))
    rng = np.random.default_rng(2)
    hits = set()
    for _ in range(300):
        out = T.multiscale_corner_crop(frames, 12, rng)
        matches = [i for i, o in enumerate(oracle) if np.array_equal(out, o)]
        assert matches, "output is not one of the 15 scale/position crops"
        hits.update(matches)
    assert hits == set(range(15))


def test_resize_of_constant_frames_is_constant():
    frames = np.full((2, 6, 8, 3), 77, np.uint8)
    out = T.resize_frames(frames, (3, 5))
    assert out.shape == (2, 3, 5, 3)
    assert (out == 77).all()


def test_to_network_input_layout_and_mean():
    frames = np.zeros((2, 4, 5, 3), np.uint8)
    frames[..., 0] = 123
    frames[0, 1, 2] = (255, 117, 104)
    x = T.to_network_input(frames)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert torch.allclose(x[1, 0], torch.zeros(4, 5))
    expected = (torch.tensor([255.0, 117.0, 104.0]) - torch.tensor(MEAN_RGB_255)) / 255.0
    assert torch.allclose(x[0, :, 1, 2], expected)


def test_select_crops_centre_only():
    crops, flipped = T.ten_crops(_ramp(height=6, width=8), 4)
    one, f1 = T.select_crops(crops, flipped, 1)
    np.testing.assert_array_equal(one[0], crops[4])
    assert f1.tolist() == [False]
    with pytest.raises(ValueError):
        T.select_crops(crops, flipped, 3)


def test_window_crops_are_window_major_with_each_windows_own_frames():
    frames = np.zeros((8, 6, 7, 3), np.uint8)
    frames[:] = np.arange(8, dtype=np.uint8)[:, None, None, None]  # pixel value = frame index
    crops, flipped = T.window_crops(frames, [0, 3, 6], clip_len=2, crop_size=4, num_crops=5)
    assert crops.shape == (15, 2, 4, 4, 3) and not flipped.any()
    assert [int(c[0, 0, 0, 0]) for c in crops[::5]] == [0, 3, 6]  # first frame of each window
    assert [int(c[1, 0, 0, 0]) for c in crops[::5]] == [1, 4, 7]
    one, _ = T.window_crops(frames, [3], clip_len=2, crop_size=4, num_crops=1)
    assert np.array_equal(one[0], T.ten_crops(frames[3:5], 4)[0][4])  # the centre crop


@pytest.mark.parametrize("size", [(12, 12), (20, 20), (3, 5)])
def test_resize_is_within_one_grey_level_of_float_bilinear(size):
    """resize_frames works on uint8 directly; the oracle resizes in float32 and rounds."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 14, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    strong = 2 * size[0] < 16 or 2 * size[1] < 14
    oracle = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=strong)
    oracle = oracle.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
    out = T.resize_frames(frames, size)
    assert out.shape == (2, *size, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(out.astype(int) - oracle).max() <= 1


# The release's max_distort 1 on its 340x256 frames: sides 256, 224, 192; (w, h) pairs whose
# scale indices differ by at most 1 (TSN's GroupMultiScaleCrop without more_fix_crop).
RELEASE_PAIRS = {(256, 256), (224, 256), (256, 224), (224, 224), (192, 224), (224, 192), (192, 192)}


@pytest.mark.parametrize("max_distort, pairs", [
    (0, {(256, 256), (224, 224), (192, 192)}),
    (1, RELEASE_PAIRS),
    (2, RELEASE_PAIRS | {(192, 256), (256, 192)}),
])
def test_multiscale_crop_box_draws_exactly_the_neighbouring_scale_pairs(max_distort, pairs):
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(600):
        y0, x0, h, w = T.multiscale_crop_box(256, 340, rng, max_distort=max_distort)
        assert (y0, x0) in [(0, 0), (0, 340 - w), (256 - h, 0), (256 - h, 340 - w), ((256 - h) // 2, (340 - w) // 2)]
        seen.add((w, h))
    assert seen == pairs


def test_square_crops_draw_what_they_drew_before_the_non_square_option():
    # max_distort 0 spends the random stream as the square-only crop did: one scale index, then a position.
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(50):
        y0, x0, h, w = T.multiscale_crop_box(256, 340, a)
        side = int(round(T.PAPER_SCALES[int(b.integers(3))] * 256))
        assert (h, w) == (side, side) and (y0, x0) == T.crop_offsets(256, 340, side)[int(b.integers(5))]


def test_a_non_square_crop_is_resized_to_the_square_input_from_its_own_pixels():
    frames = _ramp(num_frames=1, height=16, width=16)
    rng = np.random.default_rng(5)
    for _ in range(40):
        state = rng.bit_generator.state
        out = T.multiscale_corner_crop(frames, 12, rng, scales=(1.0, 0.75), max_distort=1)
        rng_copy = np.random.default_rng()
        rng_copy.bit_generator.state = state
        y0, x0, h, w = T.multiscale_crop_box(16, 16, rng_copy, (1.0, 0.75), 1)
        assert np.array_equal(out, T.resize_frames(frames[:, y0:y0 + h, x0:x0 + w], (12, 12)))
