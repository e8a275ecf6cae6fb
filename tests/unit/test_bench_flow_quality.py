"""bench/flow_quality.py reads the official Middlebury and MPI-Sintel layouts and scores EPE."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench import flow_quality as fq
from h2s_dist.data.flow_io import write_flo

SHIFT = (2.0, -1.0)  # (u right, v down) px: frame2(x + SHIFT) = frame1(x)
H, W = 20, 24


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """frame1, frame2 uint8 (H, W, 3) where frame2 is frame1 moved by SHIFT (integer, wrap-around)."""
    frame1 = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    frame2 = np.roll(frame1, (int(SHIFT[1]), int(SHIFT[0])), axis=(0, 1))
    return frame1, frame2


def _shift_flow() -> np.ndarray:
    return np.broadcast_to(np.array(SHIFT, np.float32), (H, W, 2)).copy()


def _oracle(frame1: np.ndarray, frame2: np.ndarray) -> np.ndarray:
    return _shift_flow()


@pytest.fixture
def middlebury_root(tmp_path):
    for i, (name, data) in enumerate((("Alpha", "other-data"), ("Beta", "other-data-gray"))):
        frame1, frame2 = _pair(i)
        folder = tmp_path / data / name
        folder.mkdir(parents=True)
        mode = "RGB" if data == "other-data" else "L"
        Image.fromarray(frame1).convert(mode).save(folder / "frame10.png")
        Image.fromarray(frame2).convert(mode).save(folder / "frame11.png")
        (tmp_path / "other-gt-flow" / name).mkdir(parents=True)
        flow = _shift_flow()
        flow[0, 0] = np.nan  # one unknown pixel, stored as 1e10
        write_flo(tmp_path / "other-gt-flow" / name / "flow10.flo", flow)
    return tmp_path


@pytest.fixture
def sintel_root(tmp_path):
    for scene in ("alley_1", "bamboo_2"):
        frames = [np.random.default_rng(len(scene)).integers(0, 256, (H, W, 3), dtype=np.uint8)]
        for _ in range(2):
            frames.append(np.roll(frames[-1], (int(SHIFT[1]), int(SHIFT[0])), axis=(0, 1)))
        for render_pass in ("clean", "final"):
            (tmp_path / render_pass / scene).mkdir(parents=True)
            for k, frame in enumerate(frames, start=1):
                Image.fromarray(frame).save(tmp_path / render_pass / scene / f"frame_{k:04d}.png")
        (tmp_path / "flow" / scene).mkdir(parents=True)
        for k in (1, 2):
            write_flo(tmp_path / "flow" / scene / f"frame_{k:04d}.flo", _shift_flow())
    return tmp_path


def test_middlebury_layout_gives_every_sequence_with_its_frames_and_flow(middlebury_root):
    pairs = fq.read_middlebury(middlebury_root)
    assert [p.name for p in pairs] == ["Alpha", "Beta"]
    for p in pairs:
        assert p.frame1.shape == p.frame2.shape == (H, W, 3) and p.frame1.dtype == np.uint8
        assert np.isnan(p.flow[0, 0]).all() and np.allclose(p.flow[1:], SHIFT)
    np.testing.assert_array_equal(pairs[0].frame1, _pair(0)[0])


def test_sintel_layout_pairs_each_flo_with_its_two_frames(sintel_root):
    pairs = fq.read_sintel(sintel_root, "final")
    assert [p.name for p in pairs] == ["alley_1/0001", "alley_1/0002", "bamboo_2/0001", "bamboo_2/0002"]
    # frame_0002 is frame_0001 moved by SHIFT, so the pair really is frame k -> k+1.
    first = pairs[0]
    np.testing.assert_array_equal(np.roll(first.frame1, (-1, 2), axis=(0, 1)), first.frame2)
    assert len(fq.read_sintel(sintel_root, "clean", max_pairs_per_scene=1)) == 2


def test_perfect_method_scores_zero_and_zero_flow_scores_the_shift_length(middlebury_root, sintel_root):
    datasets = {"middlebury": fq.read_middlebury(middlebury_root), "sintel_clean": fq.read_sintel(sintel_root)}
    result = fq.evaluate({"oracle": fq.pairwise(_oracle), "zero": fq.pairwise(fq.zero_flow)}, datasets)
    assert result["epe"]["oracle"] == {"middlebury": 0.0, "sintel_clean": 0.0}
    for epe in result["epe"]["zero"].values():
        assert epe == pytest.approx(np.hypot(*SHIFT))


def test_missing_layout_folders_are_reported_with_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="other-gt-flow"):
        fq.read_middlebury(tmp_path)
    with pytest.raises(ValueError, match="flow/ and clean/"):
        fq.read_sintel(tmp_path)


def test_padding_reaches_the_multiple_of_32_and_motionnet_flow_is_cropped_back():
    import torch

    from h2s_dist.models import build_motionnet

    assert fq.pad_to_multiple(np.zeros((2, 33, 64, 3))).shape == (2, 64, 64, 3)
    torch.manual_seed(0)
    method = fq.motionnet_method(build_motionnet("tiny", num_frames=3))
    frame1, frame2 = _pair(0)
    flow = method(fq.FlowPair("p", frame1, frame2, _shift_flow()))
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()


def test_motionnet_sees_the_real_window_around_a_pair_and_pads_a_bare_pair():
    video = np.arange(11)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)  # frame k is all k
    pair = fq.FlowPair("v", video[5], video[6], np.zeros((2, 2, 2), np.float32), window=video, window_index=5)
    frames, index = fq.motionnet_window(pair, 3)
    assert frames[:, 0, 0, 0].tolist() == [4, 5, 6] and index == 1
    frames, index = fq.motionnet_window(fq.FlowPair("v", video[0], video[1], pair.flow, window=video), 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 1, 2] and index == 0  # no frame before the first
    frames, index = fq.motionnet_window(fq.FlowPair("p", video[5], video[6], pair.flow), 4)
    assert frames[:, 0, 0, 0].tolist() == [5, 6, 6, 6] and index == 0
