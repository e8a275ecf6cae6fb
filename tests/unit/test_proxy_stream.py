"""Proxy-guided pretraining's clips (h2s_dist.data.proxy_stream): packing, and flow that follows
the frames through a resize. The stream itself runs on real shards in
tests/integration/test_tvl1_stages.py (each clip's own window, crop and flip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from h2s_dist.data.proxy_stream import pack_proxy_clip, resized_flow, unpack_proxy_batch


def test_packed_clips_unpack_to_the_frames_and_the_flow():
    clips, proxy = torch.randn(2, 5, 3, 8, 8), torch.randn(2, 8, 8, 8)
    packed = torch.stack([pack_proxy_clip(c, p.view(4, 2, 8, 8)) for c, p in zip(clips, proxy)])
    assert packed.shape == (2, 3 * 5 + 2 * 4, 8, 8)
    got_clips, got_proxy = unpack_proxy_batch(packed, 5)
    assert torch.equal(got_clips, clips) and torch.equal(got_proxy, proxy)


def test_a_resized_crop_scales_u_by_the_width_ratio_and_v_by_the_height_ratio():
    flows = np.zeros((3, 48, 64, 2), np.float32)
    flows[..., 0], flows[..., 1] = 2.0, 3.0  # a constant flow stays constant under bilinear resizing
    out = resized_flow(flows, 32)
    assert out.shape == (3, 2, 32, 32)
    assert torch.allclose(out[:, 0], torch.full((3, 32, 32), 2.0 * 32 / 64))
    assert torch.allclose(out[:, 1], torch.full((3, 32, 32), 3.0 * 32 / 48))


def test_a_proxy_weight_needs_its_flows_and_only_pretraining_takes_it():
    from h2s_dist.specs.training import FinetuneSpec, PretrainSpec

    data = {"dataset": "d"}
    with pytest.raises(ValueError, match=r"proxy_flows: loss.proxy_weight > 0 needs the proxy"):
        PretrainSpec(data=data, loss={"proxy_weight": 0.1})
    with pytest.raises(ValueError, match=r"proxy_flows is read only with loss.proxy_weight > 0"):
        PretrainSpec(data=data, proxy_flows="flows")
    with pytest.raises(ValueError, match="loss.proxy_weight is a pretraining term"):
        FinetuneSpec(data=data, loss={"proxy_weight": 0.1})
    assert PretrainSpec(data=data, loss={"proxy_weight": 0.1}, proxy_flows="flows").loss.proxy_weight == 0.1


def test_a_proxy_stream_config_without_its_flow_dataset_is_refused():
    from h2s_dist.data.proxy_stream import ProxyStreamConfig

    with pytest.raises(ValueError, match="flows_uri is empty"):
        ProxyStreamConfig(dataset_uri="/tmp/frames", batch_size=2, clip_len_frames=3, crop_size=32)
    assert ProxyStreamConfig(dataset_uri="/tmp/frames", batch_size=2, clip_len_frames=3, crop_size=32,
                             flows_uri="/tmp/flows").flows_uri == "/tmp/flows"
