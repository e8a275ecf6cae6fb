"""bench/flow_quality.py scores EPE per dataset (resized or not) and runs MotionNet on pairs and windows;
the readers it uses are tested in test_flow_sets.py."""

from __future__ import annotations

import numpy as np
import pytest

from bench import flow_quality as fq
from h2s_dist.train import flow_eval
from tests.unit.flow_cases import H, SHIFT, W, shift_flow, shifted_pair


def _oracle(frame1: np.ndarray, frame2: np.ndarray) -> np.ndarray:
    return shift_flow()


def _shift_pairs(count: int) -> list[fq.FlowPair]:
    return [fq.FlowPair(f"p{i}", *shifted_pair(i), shift_flow()) for i in range(count)]


def test_perfect_method_scores_zero_and_zero_flow_scores_the_shift_length():
    datasets = {"a": _shift_pairs(2), "b": _shift_pairs(1)}
    result = fq.evaluate({"oracle": fq.pairwise(_oracle), "zero": fq.pairwise(fq.zero_flow)}, datasets)
    assert result["epe"]["oracle"] == {"a": 0.0, "b": 0.0}
    for epe in result["epe"]["zero"].values():
        assert epe == pytest.approx(np.hypot(*SHIFT))
    assert result["epe_original_px"] == result["epe"]  # nothing resized


def test_resized_pairs_report_epe_in_resized_and_original_pixels():
    pair = fq.resize_pair(_shift_pairs(1)[0], 12)  # 24 x 20 -> 12 x 10, flow halved
    assert pair.scale == (0.5, 0.5)
    result = fq.evaluate({"zero": fq.pairwise(fq.zero_flow)}, {"a": [pair]})
    assert result["epe"]["zero"]["a"] == pytest.approx(np.hypot(*SHIFT) / 2)
    assert result["epe_original_px"]["zero"]["a"] == pytest.approx(np.hypot(*SHIFT))
    assert fq.scored_sizes({"a": [pair]}) == {"a": ["24x20 -> 12x10"]}


def test_what_motionnet_sees_is_said_per_dataset():
    video = np.zeros((11, 2, 2, 3), np.uint8)
    windowed = fq.FlowPair("v", video[5], video[6], np.zeros((2, 2, 2), np.float32), window=video, window_index=5)
    bare = fq.FlowPair("p", video[5], video[6], windowed.flow)
    assert fq.motionnet_input([windowed], 11) == "the pair inside a real 11-frame window"
    assert fq.motionnet_input([bare], 11).startswith("bare pair: frame2 repeated to 11 frames")
    assert fq.motionnet_input([bare, windowed], 2) == "the pair itself (2-frame network)"


def test_flavour_and_max_side_defaults_follow_quick():
    quick, full = fq._parse(["--quick", "--flavour", "small"]), fq._parse([])
    assert (quick.flavour, quick.max_side) == ("small", 512)
    assert (full.flavour, full.max_side) == (None, 0)


def test_padding_reaches_the_multiple_of_32_and_motionnet_flow_is_cropped_back():
    import torch

    from h2s_dist.models import build_motionnet

    assert flow_eval.pad_to_multiple(np.zeros((2, 33, 64, 3))).shape == (2, 64, 64, 3)
    torch.manual_seed(0)
    method = fq.motionnet_method(build_motionnet("tiny", num_frames=3))
    frame1, frame2 = shifted_pair(0)
    flow = method(fq.FlowPair("p", frame1, frame2, shift_flow()))
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()


def test_motionnet_sees_the_real_window_around_a_pair_and_pads_a_bare_pair():
    video = np.arange(11)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)  # frame k is all k
    pair = fq.FlowPair("v", video[5], video[6], np.zeros((2, 2, 2), np.float32), window=video, window_index=5)
    frames, index = flow_eval.motionnet_window(pair, 3)
    assert frames[:, 0, 0, 0].tolist() == [4, 5, 6] and index == 1
    frames, index = flow_eval.motionnet_window(fq.FlowPair("v", video[0], video[1], pair.flow, window=video), 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 1, 2] and index == 0  # no frame before the first
    frames, index = flow_eval.motionnet_window(fq.FlowPair("p", video[5], video[6], pair.flow), 4)
    assert frames[:, 0, 0, 0].tolist() == [5, 6, 6, 6] and index == 0
