"""The synthetic motion dataset: determinism, balance, exact flow, and no appearance cue."""

from __future__ import annotations

import numpy as np
import pytest

from h2s_dist.data.synthetic import (
    CLASSES,
    SyntheticMotionConfig,
    make_video,
    synthetic_split,
    write_dataset,
)
from h2s_dist.data.video import read_video

SMALL = SyntheticMotionConfig(num_videos=len(CLASSES), num_frames=4, height=64, width=80)


def _backward_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image (H, W, C) sampled bilinearly at (x + u, y + v); written here independently of the module."""
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    x = np.clip(xs + flow[..., 0], 0, w - 1.0001)
    y = np.clip(ys + flow[..., 1], 0, h - 1.0001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    img = image.astype(np.float64)
    return ((1 - ay) * ((1 - ax) * img[y0, x0] + ax * img[y0, x0 + 1])
            + ay * ((1 - ax) * img[y0 + 1, x0] + ax * img[y0 + 1, x0 + 1]))


def test_same_seed_gives_the_same_bytes_and_another_seed_differs():
    a, b = make_video(SMALL, 4), make_video(SMALL, 4)
    assert a.frames.tobytes() == b.frames.tobytes() and a.flows.tobytes() == b.flows.tobytes()
    other = SyntheticMotionConfig(num_videos=len(CLASSES), num_frames=4, height=64, width=80, seed=1)
    assert make_video(other, 4).frames.tobytes() != a.frames.tobytes()


def test_classes_and_splits_are_balanced():
    config = SyntheticMotionConfig(num_videos=8 * len(CLASSES), num_frames=2, height=16, width=16)
    labels = np.array([i % len(CLASSES) for i in range(config.num_videos)])
    assert [make_video(config, i).label for i in range(0, config.num_videos, 7)] == list(labels[::7])
    for split, per_class in (("train", 6), ("test", 2)):
        chosen = labels[[synthetic_split(i) == split for i in range(config.num_videos)]]
        assert np.bincount(chosen, minlength=len(CLASSES)).tolist() == [per_class] * len(CLASSES)


@pytest.mark.parametrize("index", range(len(CLASSES)), ids=CLASSES)
def test_gt_flow_warps_next_frame_onto_this_frame(index):
    video = make_video(SMALL, index)
    for t in range(SMALL.num_frames - 1):
        warped = _backward_warp(video.frames[t + 1], video.flows[t])
        err = np.abs(warped - video.frames[t])[video.valid[t]].mean()
        assert err < 0.8, (video.class_name, t, err)
        if video.class_name != "still":  # the check has teeth: ignoring the motion is much worse
            no_motion = np.abs(video.frames[t + 1].astype(float) - video.frames[t])[video.valid[t]].mean()
            assert no_motion > 2.5 * err, (video.class_name, t, no_motion, err)


def test_gt_flow_with_moving_sprites_warps_where_valid():
    config = SyntheticMotionConfig(num_videos=len(CLASSES), num_frames=3, height=64, width=80, num_sprites=(2, 2))
    for index in (0, 4, 8):
        video = make_video(config, index)
        assert 0.5 < video.valid.mean() < 1.0  # some pixels are occluded or leave the frame
        for t in range(2):
            warped = _backward_warp(video.frames[t + 1], video.flows[t])
            assert np.abs(warped - video.frames[t])[video.valid[t]].mean() < 0.8


def test_flow_follows_the_class_name():
    h, w = SMALL.height, SMALL.width
    flows = {CLASSES[i]: make_video(SMALL, i).flows[0] for i in range(len(CLASSES))}
    assert flows["translate_right"][..., 0].min() > 0 and np.allclose(flows["translate_right"][..., 1], 0)
    assert flows["translate_up"][..., 1].max() < 0 and np.allclose(flows["translate_up"][..., 0], 0)
    assert not flows["still"].any()
    # y points down, so clockwise on screen moves the top edge right and the bottom edge left.
    assert flows["rotate_cw"][0, :, 0].mean() > 0 > flows["rotate_cw"][-1, :, 0].mean()
    assert flows["rotate_ccw"][0, :, 0].mean() < 0 < flows["rotate_ccw"][-1, :, 0].mean()
    # Zooming in pushes content outwards: positive divergence everywhere.
    div_in = np.gradient(flows["zoom_in"][..., 0], axis=1) + np.gradient(flows["zoom_in"][..., 1], axis=0)
    div_out = np.gradient(flows["zoom_out"][..., 0], axis=1) + np.gradient(flows["zoom_out"][..., 1], axis=0)
    assert div_in.min() > 0 > div_out.max()
    assert all(f.shape == (h, w, 2) and f.dtype == np.float32 for f in flows.values())


def test_a_single_frame_carries_no_class_signal():
    """One-way ANOVA over classes of per-frame statistics: F stays at chance level (F(8, 63) < 2.8 is p > 0.01)."""
    config = SyntheticMotionConfig(num_videos=8 * len(CLASSES), num_frames=2, height=32, width=32)
    stats = np.zeros((len(CLASSES), 8, 3))
    for i in range(config.num_videos):
        frame = make_video(config, i).frames[0].astype(float)
        stats[i % len(CLASSES), i // len(CLASSES)] = frame.mean(), frame.std(), np.abs(np.diff(frame, axis=1)).mean()
    group_means = stats.mean(axis=1)
    between = 8 * ((group_means - stats.mean(axis=(0, 1))) ** 2).sum(axis=0) / (len(CLASSES) - 1)
    within = ((stats - group_means[:, None]) ** 2).sum(axis=(0, 1)) / (stats.shape[0] * (stats.shape[1] - 1))
    assert (between / within < 2.8).all(), between / within


def test_shared_scenes_film_one_scene_per_round_with_each_class_motion():
    config = SyntheticMotionConfig(num_videos=2 * len(CLASSES), num_frames=5, height=32, width=48, shared_scenes=True)
    videos = [make_video(config, i) for i in range(config.num_videos)]
    middle = [v.frames[2].astype(float) for v in videos]  # every camera passes the start pose there
    assert all(np.abs(m - middle[0]).max() <= 1 for m in middle[1:len(CLASSES)])
    assert np.abs(middle[len(CLASSES)] - middle[0]).mean() > 10  # the next round films another scene
    assert [v.class_name for v in videos[:len(CLASSES)]] == list(CLASSES)
    # The scene of a round does not depend on how many of its videos are made.
    fewer = SyntheticMotionConfig(num_videos=3, num_frames=5, height=32, width=48, shared_scenes=True)
    assert make_video(fewer, 2).frames.tobytes() == videos[2].frames.tobytes()
    for video in videos[:len(CLASSES)]:  # and the ground truth still holds
        warped = _backward_warp(video.frames[1], video.flows[0])
        assert np.abs(warped - video.frames[0])[video.valid[0]].mean() < 0.8, video.class_name


def test_write_dataset_ucf101_layout_decodes_back(tmp_path):
    config = SyntheticMotionConfig(num_videos=len(CLASSES) + 1, num_frames=4, height=32, width=48)
    written = write_dataset(tmp_path, config, ext=".avi")
    assert [label for _, label in written] == [i % len(CLASSES) for i in range(config.num_videos)]
    first, last = written[0][0], written[-1][0]
    assert first.relative_to(tmp_path).as_posix() == "TranslateLeft/v_TranslateLeft_g01_c01.avi"
    assert last.relative_to(tmp_path).as_posix() == "TranslateLeft/v_TranslateLeft_g02_c01.avi"
    decoded = read_video(first)
    assert decoded.frames.shape == (4, 32, 48, 3) and decoded.fps == pytest.approx(config.fps)
    assert np.abs(decoded.frames.astype(int) - make_video(config, 0).frames).mean() < 4.0
    flat = write_dataset(tmp_path / "flat", config, ext=".mp4", layout="flat")
    assert flat[4][0] == tmp_path / "flat" / "v_RotateCw_g01_c01.mp4"


def test_bad_config_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="even"):
        SyntheticMotionConfig(num_videos=1, height=33)
    with pytest.raises(ValueError, match="out of range"):
        make_video(SMALL, SMALL.num_videos)
