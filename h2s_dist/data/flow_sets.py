"""Optical-flow sets with ground truth, read into one record: `FlowPair`.

Every reader returns frame1, frame2 (H, W, 3) uint8 RGB and flow (H, W, 2) float32 in pixels
from frame1 to frame2, channel 0 = u (right), 1 = v (down), in the backward-warping sense of
`h2s_dist.warp`: frame2 sampled at (x + u, y + v) rebuilds frame1. The bench
(bench/flow_quality.py) and training-time validation read flow through here.

Layouts:
  - Middlebury "other" (`read_middlebury`): ROOT/other-data[-gray]/NAME/frame10.png, frame11.png
    and ROOT/other-gt-flow/NAME/flow10.flo;
  - MPI-Sintel training (`read_sintel`): ROOT/{clean,final}/SCENE/frame_XXXX.png and
    ROOT/flow/SCENE/frame_XXXX.flo (flow of frame XXXX -> XXXX+1);
  - the dev set in ../shared/data/flow_dev (`read_flow_dev`):
      flyingchairs/NNNNNNN-img0.ppm, -img1.ppm, -gt.flo  (img0 -> img1)
      kitti/frame1.png, frame2.png, flow_gt.png           (16-bit KITTI flow PNG, B = valid bit)
      yosemite/yos9.png, yos10.png, correct_yos.flo       (yos9 -> yos10; grey frames)
    The directions above were checked against the images: warping frame2 by the ground
    truth rebuilds frame1 much better than by zero or by the negated flow
    (tests/unit/test_flow_sets.py).
  - synthetic videos (`synthetic_pairs`): exact flow with an occlusion mask, and the whole clip.

`resize_pair` shrinks a pair so that its longer side fits a bound and scales the flow with it;
`FlowPair.scale` keeps the factor so that errors can be reported in original pixels.

Imports numpy, PIL and h2s_dist.data.flow_io only (no torch). Tests:
`python -m pytest tests/unit/test_flow_sets.py -q`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image

from h2s_dist.data.flow_io import read_flo, read_kitti_flow

FLOW_DEV_SETS = ("flyingchairs", "kitti", "yosemite")
# correct_yos.flo gives the whole sky one flow, (1, 0) px (the clouds' motion in the original
# sequence), but yos9/yos10 have a black, textureless sky in which no motion can be seen.
YOSEMITE_SKY_FLOW = (1.0, 0.0)


@dataclasses.dataclass(frozen=True)
class FlowPair:
    """frame1, frame2 (H, W, 3) uint8 RGB; flow (H, W, 2) float32 px frame1 -> frame2, u right,
    v down (NaN = unknown); valid (H, W) bool or None (all pixels with known flow). window
    (T, H, W, 3) uint8: the video around the pair where the dataset has it, frame1 =
    window[window_index] and frame2 = window[window_index + 1]; None for a bare pair.
    scale (sx, sy): pixels of this pair per pixel of the original files, (1, 1) unless resized."""

    name: str
    frame1: np.ndarray
    frame2: np.ndarray
    flow: np.ndarray
    valid: np.ndarray | None = None
    window: np.ndarray | None = None
    window_index: int = 0
    scale: tuple[float, float] = (1.0, 1.0)


# ----------------------------------------------------------------------------- files


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB (grey images are replicated on 3 channels)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
    if not path.is_file():
        raise ValueError(f"{path} is missing ({what})")
    return path


def _checked_pair(name: str, frame1: np.ndarray, frame2: np.ndarray, flow: np.ndarray,
                  valid: np.ndarray | None = None) -> FlowPair:
    """A FlowPair after checking that both frames and the flow share (H, W)."""
    if not frame1.shape == frame2.shape == flow.shape[:2] + (3,):
        raise ValueError(f"{name}: frames {frame1.shape}, {frame2.shape} and flow {flow.shape} "
                         "must share (H, W); are they files of the same pair?")
    return FlowPair(name, frame1, frame2, flow, valid)


# ----------------------------------------------------------------------------- public sets


def read_middlebury(root: str | os.PathLike) -> list[FlowPair]:
    """Every sequence of the Middlebury "other" set with ground truth (frame10 -> frame11)."""
    root = pathlib.Path(root)
    gt_dir = root / "other-gt-flow"
    data_dirs = [root / "other-data", root / "other-data-gray"]
    if not gt_dir.is_dir():
        raise ValueError(f"{root} has no other-gt-flow/ folder: pass the folder holding other-data/ and other-gt-flow/")
    pairs = []
    for flo in sorted(gt_dir.glob("*/flow10.flo")):
        name = flo.parent.name
        folder = next((d / name for d in data_dirs if (d / name / "frame10.png").is_file()), None)
        if folder is None:
            raise ValueError(f"ground truth for {name} but no other-data[-gray]/{name}/frame10.png under {root}")
        pairs.append(FlowPair(name, read_rgb(folder / "frame10.png"), read_rgb(folder / "frame11.png"), read_flo(flo)))
    if not pairs:
        raise ValueError(f"no other-gt-flow/NAME/flow10.flo under {root}")
    return pairs


def read_sintel(root: str | os.PathLike, render_pass: str = "clean", max_pairs_per_scene: int | None = None
                ) -> list[FlowPair]:
    """MPI-Sintel training pairs of `render_pass` ("clean" or "final"): frame_XXXX -> frame_XXXX+1
    with flow/SCENE/frame_XXXX.flo; at most `max_pairs_per_scene` evenly spaced pairs per scene."""
    root = pathlib.Path(root)
    if render_pass not in ("clean", "final"):
        raise ValueError(f"render_pass must be 'clean' or 'final', got {render_pass!r}")
    if not (root / "flow").is_dir() or not (root / render_pass).is_dir():
        raise ValueError(f"{root} needs flow/ and {render_pass}/ folders (the MPI-Sintel training layout)")
    pairs = []
    for scene in sorted(p for p in (root / "flow").iterdir() if p.is_dir()):
        flos = sorted(scene.glob("frame_*.flo"))
        if max_pairs_per_scene and len(flos) > max_pairs_per_scene:
            flos = [flos[i] for i in np.linspace(0, len(flos) - 1, max_pairs_per_scene).round().astype(int)]
        for flo in flos:
            number = int(flo.stem.split("_")[1])
            first = root / render_pass / scene.name / f"frame_{number:04d}.png"
            second = root / render_pass / scene.name / f"frame_{number + 1:04d}.png"
            if not (first.is_file() and second.is_file()):
                raise ValueError(f"{flo} has no frame pair {first.name}, {second.name} in {first.parent}")
            pairs.append(FlowPair(f"{scene.name}/{number:04d}", read_rgb(first), read_rgb(second), read_flo(flo)))
    if not pairs:
        raise ValueError(f"no flow/SCENE/frame_XXXX.flo under {root}")
    return pairs


def synthetic_pairs(num_videos: int, height: int, width: int, seed: int = 123,
                    window_frames: int = 11) -> list[FlowPair]:
    """One pair per synthetic video, every class in turn, with sprites: the middle pair of a
    `window_frames`-frame clip (frames k, k+1 with k = (window_frames - 1) // 2), clip kept."""
    from h2s_dist.data.synthetic import SyntheticMotionConfig, make_video

    config = SyntheticMotionConfig(num_videos=num_videos, num_frames=window_frames, height=height, width=width,
                                   seed=seed, num_sprites=(0, 2))
    k = (window_frames - 1) // 2
    pairs = []
    for i in range(num_videos):
        video = make_video(config, i)
        pairs.append(FlowPair(video.key, video.frames[k], video.frames[k + 1], video.flows[k], video.valid[k],
                              window=video.frames, window_index=k))
    return pairs


# ----------------------------------------------------------------------------- the dev set


def read_flyingchairs(folder: str | os.PathLike) -> list[FlowPair]:
    """FlyingChairs pairs NNNNNNN-img0.ppm -> NNNNNNN-img1.ppm with NNNNNNN-gt.flo (dense flow)."""
    folder = pathlib.Path(folder)
    pairs = []
    for flo in sorted(folder.glob("*-gt.flo")):
        stem = flo.name[: -len("-gt.flo")]
        img0 = _require(folder / f"{stem}-img0.ppm", f"first frame of the pair of {flo.name}")
        img1 = _require(folder / f"{stem}-img1.ppm", f"second frame of the pair of {flo.name}")
        pairs.append(_checked_pair(f"flyingchairs/{stem}", read_rgb(img0), read_rgb(img1), read_flo(flo)))
    if not pairs:
        raise ValueError(f"no NNNNNNN-gt.flo in {folder} (FlyingChairs layout: NNNNNNN-img0.ppm, -img1.ppm, -gt.flo)")
    return pairs


def read_kitti_pair(folder: str | os.PathLike) -> list[FlowPair]:
    """The KITTI pair frame1.png -> frame2.png with flow_gt.png; valid = the PNG's valid bit
    (sparse: LiDAR points, about 16 % of the pixels of the dev pair)."""
    folder = pathlib.Path(folder)
    frame1 = read_rgb(_require(folder / "frame1.png", "KITTI first frame"))
    frame2 = read_rgb(_require(folder / "frame2.png", "KITTI second frame"))
    flow, valid = read_kitti_flow(_require(folder / "flow_gt.png", "KITTI 16-bit flow PNG"))
    return [_checked_pair("kitti/frame1", frame1, frame2, flow, valid)]


def read_yosemite(folder: str | os.PathLike, include_sky: bool = False) -> list[FlowPair]:
    """Yosemite yos9.png -> yos10.png with correct_yos.flo (grey frames, replicated to RGB).

    Unknown flow (|value| > 1e9) is NaN, as every .flo. Unless `include_sky`, the sky is not
    valid: the file gives it the uniform flow YOSEMITE_SKY_FLOW, a motion these frames (black
    sky, no clouds) do not show; leaving it out is the usual "Yosemite without clouds"."""
    folder = pathlib.Path(folder)
    frame1 = read_rgb(_require(folder / "yos9.png", "Yosemite first frame"))
    frame2 = read_rgb(_require(folder / "yos10.png", "Yosemite second frame"))
    flow = read_flo(_require(folder / "correct_yos.flo", "Yosemite ground truth yos9 -> yos10"))
    valid = None if include_sky else ~(flow == np.float32(YOSEMITE_SKY_FLOW)).all(axis=-1)
    return [_checked_pair("yosemite/yos9", frame1, frame2, flow, valid)]


_DEV_READERS = {"flyingchairs": read_flyingchairs, "kitti": read_kitti_pair, "yosemite": read_yosemite}


def read_flow_dev(root: str | os.PathLike, sets: tuple[str, ...] = FLOW_DEV_SETS) -> dict[str, list[FlowPair]]:
    """{set name: pairs} of the flow dev set at `root` (the layout in the module docstring)."""
    root = pathlib.Path(root)
    unknown = sorted(set(sets) - set(_DEV_READERS))
    if unknown:
        raise ValueError(f"unknown flow dev sets {unknown}; choose from {list(FLOW_DEV_SETS)}")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: pass the flow_dev folder holding {', '.join(sets)}/")
    for name in sets:
        if not (root / name).is_dir():
            raise ValueError(f"{root / name} is missing: the flow dev set needs {', '.join(s + '/' for s in sets)}")
    return {name: _DEV_READERS[name](root / name) for name in sets}


# ----------------------------------------------------------------------------- resizing


def resize_pair(pair: FlowPair, max_side: int | None) -> FlowPair:
    """`pair` shrunk so that its longer side is `max_side` (unchanged when it already fits).

    Frames: PIL bilinear (antialiased when shrinking). Flow and valid: nearest neighbour (a
    resized pixel takes the sample under its centre, so sparse KITTI points and NaN entries
    are never blended), u multiplied by new_w / w and v by new_h / h; `scale` is multiplied
    by the same factors, so flow / scale is in original pixels."""
    h, w = pair.frame1.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return pair
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    factor = max_side / max(h, w)
    new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
    sx, sy = new_w / w, new_h / h
    rows = np.minimum(((np.arange(new_h) + 0.5) / sy).astype(int), h - 1)
    cols = np.minimum(((np.arange(new_w) + 0.5) / sx).astype(int), w - 1)
    flow = pair.flow[rows[:, None], cols[None, :]] * np.array([sx, sy], np.float32)
    valid = None if pair.valid is None else pair.valid[rows[:, None], cols[None, :]]
    window = None if pair.window is None else np.stack([_resize_image(f, new_w, new_h) for f in pair.window])
    return dataclasses.replace(
        pair, frame1=_resize_image(pair.frame1, new_w, new_h), frame2=_resize_image(pair.frame2, new_w, new_h),
        flow=flow.astype(np.float32), valid=valid, window=window, scale=(pair.scale[0] * sx, pair.scale[1] * sy))


def _resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
