"""The synthetic motion dataset: determinism, balance, exact flow, no appearance cue to the
motion, and in the scene_x_motion set a scene type that one frame tells and a motion that the
flow tells."""

from __future__ import annotations

import numpy as np
import pytest

from h2s_dist.data.synthetic import (
    CLASSES,
    SCENE_LOOKS,
    SCENE_MOTIONS,
    SCENE_TYPES,
    SCENE_X_MOTION_CLASSES,
    SyntheticMotionConfig,
    make_video,
    scene_and_motion,
    synthetic_split,
    write_dataset,
)
from h2s_dist.data.video import read_video

SMALL = SyntheticMotionConfig(num_videos=len(CLASSES), num_frames=4, height=64, width=80)
SCENES = SyntheticMotionConfig(num_videos=len(CLASSES), num_frames=4, height=64, width=80, classes="scene_x_motion")


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


@pytest.mark.parametrize(("config", "index"), [(SMALL, i) for i in range(len(CLASSES))]
                         + [(SCENES, i) for i in range(len(CLASSES))], ids=CLASSES + SCENE_X_MOTION_CLASSES)
def test_gt_flow_warps_next_frame_onto_this_frame(config, index):
    video = make_video(config, index)
    for t in range(config.num_frames - 1):
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


def _flow_motion(flow: np.ndarray) -> str:
    """The camera motion a (H, W, 2) flow shows, from its mean divergence and curl (y down, so
    a counter-clockwise turn on screen has negative curl dv/dx - du/dy)."""
    div = np.gradient(flow[..., 0], axis=1) + np.gradient(flow[..., 1], axis=0)
    curl = np.gradient(flow[..., 1], axis=1) - np.gradient(flow[..., 0], axis=0)
    if div.mean() > 5e-3:
        return "zoom_in"
    if curl.mean() < -5e-3:
        return "rotate_ccw"
    if abs(div).max() < 1e-4 and abs(curl).max() < 1e-4 and flow[..., 0].max() < 0:
        return "translate_left"
    return "other"


def _scene_x_motion_videos(rounds: int, **config):
    config = SyntheticMotionConfig(num_videos=rounds * len(CLASSES), num_frames=2, classes="scene_x_motion", **config)
    return [make_video(config, i) for i in range(config.num_videos)]


def test_scene_x_motion_classes_cross_scene_types_with_motions():
    assert len(SCENE_X_MOTION_CLASSES) == len(CLASSES) == len(SCENE_TYPES) * len(SCENE_MOTIONS)
    assert SCENE_X_MOTION_CLASSES[4] == "forest_rotate_ccw"
    assert scene_and_motion("forest_rotate_ccw") == ("forest", "rotate_ccw")
    assert scene_and_motion("rotate_ccw") == (None, "rotate_ccw")
    video = make_video(SCENES, 4)
    assert (video.label, video.class_name, video.key) == (4, "forest_rotate_ccw", "v_ForestRotateCcw_g01_c01")


def test_a_frame_tells_its_scene_type_by_its_colour():
    """The mean colour of any one frame is nearest its own scene type's palette."""
    palettes = np.array([SCENE_LOOKS[scene].base_rgb for scene in SCENE_TYPES])
    for video in _scene_x_motion_videos(4, height=32, width=48):
        for frame in video.frames:
            nearest = np.linalg.norm(palettes - frame.reshape(-1, 3).mean(axis=0), axis=1).argmin()
            assert SCENE_TYPES[nearest] == scene_and_motion(video.class_name)[0], video.key


def test_a_video_tells_its_motion_by_its_flow_whatever_its_scene():
    for video in _scene_x_motion_videos(2, height=32, width=48):
        assert _flow_motion(video.flows[0]) == scene_and_motion(video.class_name)[1], video.key


def test_a_frame_carries_no_motion_signal_within_its_scene_type():
    """Per-frame statistics less their scene type's mean: one-way ANOVA over the 3 motions stays
    at chance level (F(2, 69) < 4.9 is p > 0.01)."""
    videos = _scene_x_motion_videos(8, height=32, width=32)
    stats = np.array([(f.mean(), f.std(), np.abs(np.diff(f, axis=1)).mean())
                      for f in (v.frames[0].astype(float) for v in videos)])
    scene = np.array([v.label // len(SCENE_MOTIONS) for v in videos])
    motion = np.array([v.label % len(SCENE_MOTIONS) for v in videos])
    for s in range(len(SCENE_TYPES)):
        stats[scene == s] -= stats[scene == s].mean(axis=0)
    groups = [stats[motion == m] for m in range(len(SCENE_MOTIONS))]
    between = sum(len(g) * (g.mean(axis=0) - stats.mean(axis=0)) ** 2 for g in groups) / (len(groups) - 1)
    within = sum(((g - g.mean(axis=0)) ** 2).sum(axis=0) for g in groups) / (len(stats) - len(groups) - len(SCENE_TYPES))
    assert (between / within < 4.9).all(), between / within


def test_shared_scenes_of_scene_x_motion_film_one_scene_per_scene_type():
    config = SyntheticMotionConfig(num_videos=len(CLASSES), num_frames=5, height=32, width=48, shared_scenes=True,
                                   classes="scene_x_motion")
    middle = [make_video(config, i).frames[2].astype(float) for i in range(config.num_videos)]
    for first in range(0, len(CLASSES), len(SCENE_MOTIONS)):  # one scene type's 3 motions
        assert all(np.abs(m - middle[first]).max() <= 1 for m in middle[first + 1:first + len(SCENE_MOTIONS)])
    assert np.abs(middle[len(SCENE_MOTIONS)] - middle[0]).mean() > 10  # another scene type, another scene


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
    with pytest.raises(ValueError, match="scene_x_motion"):
        SyntheticMotionConfig(num_videos=1, classes="scenes")
