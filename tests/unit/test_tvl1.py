"""TV-L1 flow maths, 8-bit flow storage and the flow crops of the two-stage baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("cv2", reason="the TV-L1 baseline needs the `baseline` extra (opencv-contrib)")

from h2s_dist.baseline import tvl1  # noqa: E402
from h2s_dist.data import flow_shards, transforms  # noqa: E402
from h2s_dist.models.stacked import FlowNormalize  # noqa: E402
from h2s_dist.models.motionnet import RAW_FLOW_SCALE  # noqa: E402

FAST = tvl1.TVL1Params.fast()


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random grayscale texture (bicubic upsampled noise): TV-L1 locks onto it."""
    from PIL import Image

    noise = (np.random.default_rng(seed).random((height // 4, width // 4)) * 255).astype(np.uint8)
    return np.array(Image.fromarray(noise).resize((width, height), Image.BICUBIC))


def _shifted_pair(dx: int, dy: int, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """prev, next where the content moves dx right and dy down: next(x) = prev(x - d)."""
    big = _texture(height + 20, width + 20)
    prev = big[10:10 + height, 10:10 + width]
    nxt = big[10 - dy:10 - dy + height, 10 - dx:10 - dx + width]
    return prev, nxt


def test_tvl1_recovers_a_translation_with_motionnet_sign():
    prev, nxt = _shifted_pair(dx=2, dy=1)
    flow = tvl1.tvl1_flow(prev, nxt, FAST)
    inner = flow[8:-8, 8:-8]
    assert flow.shape == (48, 64, 2) and flow.dtype == np.float32
    # Content moving right/down: u = +2, v = +1, so next sampled at x + flow rebuilds prev.
    np.testing.assert_allclose(inner.reshape(-1, 2).mean(0), [2.0, 1.0], atol=0.1)
    assert np.median(np.abs(inner[..., 0] - 2.0)) < 0.1


def test_tvl1_flow_backward_warps_next_onto_prev():
    from h2s_dist.warp import backward_warp

    prev, nxt = _shifted_pair(dx=-3, dy=2)
    flow = tvl1.tvl1_flow(np.stack([prev] * 3, -1), np.stack([nxt] * 3, -1), FAST)  # RGB input too
    image = torch.tensor(nxt, dtype=torch.float32)[None, None]
    warped = backward_warp(image, torch.from_numpy(flow).permute(2, 0, 1)[None])[0, 0].numpy()
    error = np.abs(warped - prev)[8:-8, 8:-8].mean()
    assert error < 0.2 * np.abs(nxt.astype(float) - prev)[8:-8, 8:-8].mean()


def test_window_flows_gives_one_quantised_field_per_pair():
    frames = np.stack([np.stack([_texture(48, 64)] * 3, -1)] * 4)
    flows = tvl1.window_flows(frames, params=FAST)
    assert flows.shape == (3, 48, 64, 2) and flows.dtype == np.uint8
    assert np.all(np.abs(flows.astype(int) - 128) <= 1)  # still frames: zero flow


def test_quantize_maps_minus_bound_zero_plus_bound_to_0_128_255():
    q = tvl1.quantize_flow(np.array([-20.0, 0.0, 20.0, -100.0, 100.0]))
    assert q.tolist() == [0, 128, 255, 0, 255]


def test_dequantize_roundtrip_within_one_step():
    flow = np.linspace(-20, 20, 1001, dtype=np.float32)
    back = tvl1.dequantize_flow(tvl1.quantize_flow(flow))
    assert np.abs(back - flow).max() <= 20 / 255 + 1e-4  # half a step; the asked bound is 20/127.5


def test_quantised_input_matches_flow_normalize_scale():
    # Constant flows (bilinear x2 upsampling keeps a constant): FlowNormalize's output and
    # the stored flow's q - 128 differ only by q's rounding (<= 0.5), clamping included.
    for value_px in (-25.0, -20.0, -7.3, 0.0, 0.4, 13.0, 20.0, 31.0):
        raw = torch.full((1, 2, 4, 4), value_px / RAW_FLOW_SCALE)
        reference = FlowNormalize()(raw)
        mine = flow_shards.to_network_input(tvl1.quantize_flow(np.full((1, 2, 8, 8), value_px)))
        assert torch.allclose(mine, reference, atol=0.5 + 1e-4), value_px


def test_flip_negates_u_exactly_and_keeps_v():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (3, 5, 7, 2)).astype(np.uint8)
    flipped = tvl1.flip_quantized(q)
    np.testing.assert_allclose(tvl1.dequantize_flow(flipped[..., 0]), -tvl1.dequantize_flow(q[..., ::-1, 0]), atol=1e-5)
    np.testing.assert_array_equal(flipped[..., 1], q[..., ::-1, 1])


def test_flip_of_shifted_texture_flow_is_flow_of_flipped_texture():
    prev, nxt = _shifted_pair(dx=2, dy=1)
    q = tvl1.quantize_flow(tvl1.tvl1_flow(prev, nxt, FAST))
    q_of_flipped = tvl1.quantize_flow(tvl1.tvl1_flow(prev[:, ::-1], nxt[:, ::-1], FAST))
    diff = np.abs(tvl1.flip_quantized(q).astype(int) - q_of_flipped.astype(int))[8:-8, 8:-8]
    assert np.median(diff) <= 1


def test_flow_stack_roundtrip_and_window_slice():
    q = np.clip(np.random.default_rng(1).normal(128, 4, (4, 16, 24, 2)), 0, 255).astype(np.uint8)
    payload = flow_shards.encode_flow_stack(q)
    assert flow_shards.flow_stack_info(payload) == (4, 24, 16)
    window = flow_shards.decode_flow_stack(payload, start=1, length=2)
    assert window.shape == (2, 16, 24, 2)
    assert np.abs(window.astype(int) - q[1:3]).mean() < 2  # JPEG 95


def test_read_flow_window_pads_short_videos_with_zero_flow():
    q = np.full((2, 8, 8, 2), 200, np.uint8)
    sample = {"flows": flow_shards.encode_flow_stack(q)}
    window = flow_shards.read_flow_window(sample, start=1, length=3, num_flows=2)
    assert window.shape == (3, 8, 8, 2)
    assert np.all(window[1:] == flow_shards.ZERO_FLOW_Q)
    assert abs(int(window[0, 0, 0, 0]) - 200) <= 2


def test_stack_channels_orders_u0_v0_u1_v1():
    q = np.zeros((2, 3, 4, 2), np.uint8)
    q[0, ..., 0], q[0, ..., 1], q[1, ..., 0], q[1, ..., 1] = 1, 2, 3, 4
    stacked = flow_shards.stack_channels(q)
    assert stacked.shape == (4, 3, 4)
    assert stacked[:, 0, 0].tolist() == [1, 2, 3, 4]


def test_eval_crops_negate_u_on_flipped_crops_only():
    flows = np.zeros((5, 10, 12, 2), np.uint8)
    flows[..., 0] = 150  # u = +2.7 px everywhere
    flows[..., 1] = 90
    crops, flipped = flow_shards.eval_flow_crops(flows, [0, 2], num_flows=3, crop_size=8, num_crops=10)
    assert crops.shape == (20, 6, 8, 8) and flipped.tolist() == ([False] * 5 + [True] * 5) * 2
    u, v = crops[:, 0::2], crops[:, 1::2]
    assert np.all(u[~flipped] == 150) and np.all(u[flipped] == 105)
    assert np.all(v == 90)


def test_eval_crops_match_ten_crops_positions():
    flows = np.random.default_rng(2).integers(0, 256, (3, 10, 12, 2)).astype(np.uint8)
    crops, _ = flow_shards.eval_flow_crops(flows, [0], num_flows=3, crop_size=8, num_crops=5)
    expected, _ = transforms.ten_crops(flows, 8)
    np.testing.assert_array_equal(crops, flow_shards.stack_channels(expected[:5]))


def test_importing_tvl1_does_not_import_cv2():
    import subprocess
    import sys

    code = "import sys, h2s_dist.baseline.tvl1; assert 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
