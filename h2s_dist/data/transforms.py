"""Clip windows, crops and flips for training and testing (paper: "Training augmentation"
and "Test protocol").

Frames travel as uint8 numpy arrays (T, H, W, 3), RGB, until the very end, where
`to_network_input` turns them into float32 torch tensors (T, 3, H, W) normalised as
`h2s_dist.frames.normalize` does. Cropping and flipping are index slicing on uint8;
only resizing touches pixel values (bilinear, rounded back to uint8).

Crop positions are (y0, x0) of the top-left corner, y down, x right, in pixels. The five
positions are always listed in the order CROP_POSITIONS: top-left, top-right,
bottom-left, bottom-right, centre.

A horizontal flip mirrors x. Optical flow computed on a flipped clip therefore has its
u component (rightward) negated relative to the unflipped clip: `ten_crops` reports a
`flipped` flag per crop so that a TV-L1 baseline using precomputed flow can negate u.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from h2s_dist.frames import normalize

CROP_POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right", "centre")
PAPER_SCALES = (1.0, 0.875, 0.75)


def random_window_start(num_frames: int, clip_len: int, rng: np.random.Generator) -> int:
    """Uniform start index of a window of `clip_len` consecutive frames in [0, T - clip_len].

    A video shorter than the window gets start 0; `pad_to_length` then repeats its last
    frame so the clip still has `clip_len` frames.
    """
    if num_frames < 1 or clip_len < 1:
        raise ValueError(f"need num_frames >= 1 and clip_len >= 1, got {num_frames}, {clip_len}")
    return int(rng.integers(0, max(num_frames - clip_len, 0) + 1))


def eval_window_starts(num_frames: int, clip_len: int = 11, num_windows: int = 25) -> list[int]:
    """Start indices of the `num_windows` test windows: i * step, step = floor((T - L + 1) / N).

    This is the paper's protocol (T = num_frames, L = clip_len, N = num_windows). When the
    video is too short for that (step == 0, i.e. T - L + 1 < N), the N starts are spread
    evenly over the valid range [0, max(T - L, 0)] instead (floor of a linspace), so
    windows repeat but still cover the video; T <= L gives N starts of 0. Always N
    starts, so every video yields the same number of clips.
    """
    if num_frames < 1 or clip_len < 1 or num_windows < 1:
        raise ValueError(
            f"need num_frames, clip_len, num_windows >= 1, got {num_frames}, {clip_len}, {num_windows}"
        )
    step = (num_frames - clip_len + 1) // num_windows
    if step > 0:
        return [i * step for i in range(num_windows)]
    last = max(num_frames - clip_len, 0)
    return [int(s) for s in np.floor(np.linspace(0, last, num_windows))]


def pad_to_length(frames: np.ndarray, length: int) -> np.ndarray:
    """(T, H, W, 3) -> (length, H, W, 3): truncate, or repeat the last frame (short videos)."""
    if frames.shape[0] == 0:
        raise ValueError("cannot pad an empty clip: the video decoded to zero frames")
    if frames.shape[0] >= length:
        return frames[:length]
    pad = np.repeat(frames[-1:], length - frames.shape[0], axis=0)
    return np.concatenate([frames, pad], axis=0)


def crop_offsets(height: int, width: int, side: int) -> list[tuple[int, int]]:
    """(y0, x0) of a `side` x `side` square at each of CROP_POSITIONS in an H x W frame.

    The centre crop starts at ((H - side) // 2, (W - side) // 2).
    """
    if side < 1 or side > min(height, width):
        raise ValueError(
            f"crop side {side} does not fit a {height}x{width} frame: lower crop_size or "
            "ingest the videos at a larger size"
        )
    dy, dx = height - side, width - side
    return [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)]


def crop(frames: np.ndarray, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, height, width, 3), the window starting at row y0, column x0."""
    return frames[:, y0 : y0 + height, x0 : x0 + width]


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 (T, H, W, 3) to (T, size[0], size[1], 3), rounded to uint8.

    size = (height, width). Uses torch (align_corners=False), so the readers need no
    OpenCV. Antialiased only when shrinking by more than 2x: the training crops (256 ->
    224, 192 -> 224) alias nothing visible, and antialiasing would triple the cost of the
    reader's hottest step. Returns the input itself when the size already matches.
    Resizes uint8 directly (torch's channels-last uint8 kernel, within one grey level of
    resizing in float and rounding): 3-4x cheaper than going through float32, and the
    crop's resize costs a training window about as much as decoding it
    (bench/data_feed.py).
    """
    if frames.shape[1:3] == tuple(size):
        return frames
    # An (T, H, W, 3) array seen as (T, 3, H, W) is channels-last: the layout of the fast kernel.
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    strong_shrink = 2 * size[0] < frames.shape[1] or 2 * size[1] < frames.shape[2]
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=strong_shrink)
    return np.ascontiguousarray(y.permute(0, 2, 3, 1).numpy())


def multiscale_crop_box(
    height: int, width: int, rng: np.random.Generator, scales: tuple[float, ...] = PAPER_SCALES, max_distort: int = 0,
) -> tuple[int, int, int, int]:
    """(y0, x0, crop height, crop width) of a training crop in an H x W frame.

    Sides are round(scale * min(H, W)) for each scale. With max_distort 0 the crop is a square
    of one side drawn uniformly; with max_distort d (the release's `max_distort: 1`, TSN's
    multi-scale crop) the (width, height) pair is drawn uniformly from the pairs of sides whose
    indices in `scales` differ by at most d, so neighbouring scales give non-square crops.
    The position is a random one of the 5 CROP_POSITIONS."""
    sides = [max(1, int(round(scale * min(height, width)))) for scale in scales]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]  # with max_distort 0: the draw of one scale
    dy, dx = height - crop_h, width - crop_w
    if dy < 0 or dx < 0:
        raise ValueError(f"crop {crop_h}x{crop_w} does not fit a {height}x{width} frame")
    offsets = [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)]
    y0, x0 = offsets[int(rng.integers(len(CROP_POSITIONS)))]
    return y0, x0, crop_h, crop_w


def multiscale_corner_crop(
    frames: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    scales: tuple[float, ...] = PAPER_SCALES,
    max_distort: int = 0,
) -> np.ndarray:
    """Training crop: the `multiscale_crop_box` (a square of side round(scale * min(H, W)) with
    max_distort 0, else possibly non-square), resized to crop_size x crop_size.

    (T, H, W, 3) uint8 -> (T, crop_size, crop_size, 3) uint8 (any trailing channel count). The
    same crop for every frame of the clip (the flows between frames must stay consistent).
    """
    y0, x0, crop_h, crop_w = multiscale_crop_box(frames.shape[1], frames.shape[2], rng, scales, max_distort)
    return resize_frames(crop(frames, y0, x0, crop_h, crop_w), (crop_size, crop_size))


def horizontal_flip(frames: np.ndarray) -> np.ndarray:
    """Mirror x: (T, H, W, 3) -> same shape, column j becomes column W - 1 - j.

    Flow on the result has u negated (and mirrored) relative to the input's flow.
    """
    return frames[:, :, ::-1]


def random_flip(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """horizontal_flip with probability 1/2."""
    return horizontal_flip(frames) if rng.random() < 0.5 else frames


def ten_crops(frames: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Test crops: the 5 CROP_POSITIONS of side crop_size (no resizing), then the same 5 flipped.

    (T, H, W, 3) uint8 -> crops (10, T, crop_size, crop_size, 3) uint8 and
    flipped (10,) bool = [False] * 5 + [True] * 5. Crop i + 5 is crop i mirrored.
    """
    height, width = frames.shape[1:3]
    plain = [crop(frames, y0, x0, crop_size, crop_size) for y0, x0 in crop_offsets(height, width, crop_size)]
    crops = np.stack(plain + [horizontal_flip(c) for c in plain])
    flipped = np.array([False] * 5 + [True] * 5)
    return crops, flipped


def select_crops(crops: np.ndarray, flipped: np.ndarray, num_crops: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep 10 (all), 5 (unflipped positions) or 1 (the unflipped centre) of `ten_crops`."""
    index = {10: slice(0, 10), 5: slice(0, 5), 1: slice(4, 5)}.get(num_crops)
    if index is None:
        raise ValueError(f"num_crops must be 1, 5 or 10, got {num_crops}")
    return crops[index], flipped[index]


def window_crops(
    frames: np.ndarray, starts: list[int], clip_len: int, crop_size: int, num_crops: int
) -> tuple[np.ndarray, np.ndarray]:
    """The test inputs of one video: for each window start, `select_crops` of its `ten_crops`.

    frames (T, H, W, 3) uint8 with T >= starts[-1] + clip_len -> crops
    (len(starts) * num_crops, clip_len, crop_size, crop_size, 3) uint8, window-major, and
    flipped (len(starts) * num_crops,) bool."""
    per_window = [select_crops(*ten_crops(frames[s : s + clip_len], crop_size), num_crops) for s in starts]
    return np.concatenate([c for c, _ in per_window]), np.concatenate([f for _, f in per_window])


def channels_first(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) numpy -> uint8 torch (..., 3, H, W), contiguous: the training
    stream's clip, normalised later (on the device) by `h2s_dist.frames.normalize`."""
    return torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3).contiguous()


def to_network_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) numpy -> float32 torch (..., 3, H, W), (x - mean) / 255."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    return normalize(x.movedim(-1, -3))
