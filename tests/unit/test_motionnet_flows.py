"""MotionNet as a cached flow source (h2s_dist.baseline.motionnet_flows): which window gives
which of a video's flows, checked with a stub network whose flow i says which frame it saw,
and the tvl1_flows spec's `source: motionnet`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from h2s_dist.baseline.motionnet_flows import video_flows, window_starts
from h2s_dist.baseline.tvl1 import dequantize_flow
from h2s_dist.frames import MEAN_RGB_255


class FrameIndexFlow(torch.nn.Module):
    """A T-frame 'MotionNet' whose flow k has u = (red value of its input frame k) - mean red,
    v = 0, in pixels: on frames of constant red 123 + t, flow k of a window starting at s has
    u = s + k, i.e. the video's flow index. flow2 at half resolution, raw units (px / 20)."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.config = SimpleNamespace(num_frames=num_frames)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to read

    def forward(self, x):  # x (B, T, 3, H, W), (pixel - mean) / 255
        u = x[:, :-1, 0] * 255.0  # (B, T-1, H, W) pixels: red - mean red
        flow = torch.stack([u, torch.zeros_like(u)], dim=2).flatten(1, 2)  # u0, v0, u1, v1, ...
        return [F.avg_pool2d(flow, 2) / 20.0]


def _frames(num_frames: int, height: int = 20, width: int = 36) -> np.ndarray:
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = (MEAN_RGB_255[0] + np.arange(num_frames))[:, None, None]
    return frames


@pytest.mark.parametrize("num_frames, window, starts", [
    (24, 2, list(range(23))), (24, 11, [0, 10, 13]), (21, 11, [0, 10]), (6, 3, [0, 2, 3]), (5, 11, [0]),
])
def test_windows_cover_every_pair_with_shared_end_frames(num_frames, window, starts):
    assert window_starts(num_frames, window) == starts
    covered = {s + k for s in starts for k in range(window - 1)}
    assert set(range(num_frames - 1)) <= covered


@pytest.mark.parametrize("num_frames, window", [(7, 2), (7, 3), (6, 3), (12, 11), (4, 11)])
def test_flow_i_of_the_video_comes_from_frames_i_and_i_plus_1(num_frames, window):
    flows = video_flows(FrameIndexFlow(window), _frames(num_frames), bound=20.0, batch_windows=2)
    assert flows.shape == (num_frames - 1, 20, 36, 2) and flows.dtype == np.uint8
    u, v = dequantize_flow(flows[..., 0]), dequantize_flow(flows[..., 1])
    expected = np.arange(num_frames - 1, dtype=np.float32)[:, None, None]
    half_step = 20.0 / 255 + 1e-4  # quantisation: one step is 40/255 px
    assert np.abs(u - expected).max() <= half_step and np.abs(v).max() <= half_step


def test_source_motionnet_needs_its_weights_and_tvl1_refuses_them():
    from h2s_dist.specs.driver import TVL1FlowsSpec

    with pytest.raises(ValueError, match="source motionnet needs motionnet_weights"):
        TVL1FlowsSpec(dataset="d", source="motionnet")
    with pytest.raises(ValueError, match="motionnet_weights is read only with source: motionnet"):
        TVL1FlowsSpec(dataset="d", motionnet_weights="w.pt")
    assert TVL1FlowsSpec(dataset="d", source="motionnet", motionnet_weights="w.pt").motionnet_frames == 2


def test_a_tvl1_cache_keeps_its_fingerprint_and_a_motionnet_one_differs():
    from h2s_dist.specs.driver import TVL1FlowsSpec
    from h2s_dist.train.stages.tvl1_flows import plan_fingerprint

    from h2s_dist.data import resumable
    from h2s_dist.train.stages.tvl1_flows import PLAN_VERSION

    chunks = [[{"key": "a", "sha256": "0", "num_frames": 9, "shard": "s/shard-000000.tar"}]]
    tvl1 = TVL1FlowsSpec(dataset="d")
    before_sources = {"version": PLAN_VERSION, "chunks": [[("a", "0", 9, "shard-000000.tar")]], "size": None,
                      "bound": 20.0, "quality": 95, "tvl1": tvl1.tvl1.model_dump()}
    assert plan_fingerprint(tvl1, chunks) == resumable.plan_fingerprint(before_sources)[:16]
    net = TVL1FlowsSpec(dataset="d", source="motionnet", motionnet_weights="w.pt")
    other = TVL1FlowsSpec(dataset="d", source="motionnet", motionnet_weights="v.pt")
    assert len({plan_fingerprint(s, chunks) for s in (tvl1, net, other)}) == 3
