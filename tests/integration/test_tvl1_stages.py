"""The TV-L1 baseline stages on real shards: tvl1_flows (in-process and as Ray tasks),
its resume, train_temporal_flows through `launch`, and test-time scoring of the flows.

Frames: the shared synthetic dataset (64x48 JPEG stacks, 16 frames); flows of its 9
split-1 test videos with a fast TV-L1 setting, so the whole module stays ~30 s on 2 cores.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("cv2", reason="the TV-L1 baseline needs the `baseline` extra (opencv-contrib)")

from h2s_dist.baseline import tvl1  # noqa: E402
from h2s_dist.data import codec, flow_shards, manifest, storage  # noqa: E402
from h2s_dist.data.shard_io import iter_samples  # noqa: E402
from h2s_dist.data.skips import SkipRecorder  # noqa: E402
from h2s_dist.specs.driver import TVL1FlowsSpec  # noqa: E402
from h2s_dist.tracking import NullTracker  # noqa: E402
from h2s_dist.train import scoring  # noqa: E402
from h2s_dist.train.stages import tvl1_flows  # noqa: E402

pytestmark = pytest.mark.integration

FAST_TVL1 = {"num_scales": 2, "num_warps": 2, "inner_iterations": 10, "outer_iterations": 3}
CROP = 32
CLIP_LEN = 5


def _spec(dataset: str, **overrides) -> TVL1FlowsSpec:
    base = dict(dataset=dataset, split=1, subset="test", videos_per_shard=2, num_tasks=0, tvl1=FAST_TVL1)
    return TVL1FlowsSpec(**{**base, **overrides})


@pytest.fixture(scope="module")
def frames_uri(synthetic_dataset_uri) -> str:
    return synthetic_dataset_uri


@pytest.fixture(scope="module")
def computed(frames_uri, tmp_path_factory) -> tuple[str, dict]:
    """(stage output URI, outputs) of tvl1_flows computed in this process."""
    out = str(tmp_path_factory.mktemp("tvl1_local"))
    return out, tvl1_flows.run(_spec(frames_uri), NullTracker(), out)


def _read_samples(dataset_uri: str, keys: set[str] | None = None) -> dict[str, dict]:
    """{key: raw webdataset sample} of a dataset's videos (all, or those in `keys`)."""
    rows = [r for r in manifest.read_manifest(dataset_uri).to_pylist() if keys is None or r["key"] in keys]
    shards = sorted({storage.join(dataset_uri, "shards", r["shard"].rsplit("/", 1)[-1]) for r in rows})
    recorder = SkipRecorder()
    found = {s["__key__"]: s for s in iter_samples(shards, {r["key"] for r in rows}, recorder, None)}
    assert not recorder.skipped
    return found


def _stored_flows(flows_uri: str) -> dict[str, np.ndarray]:
    """{key: (N, H, W, 2) uint8} of every sample of a flow dataset."""
    return {k: flow_shards.decode_flow_stack(s["flows"]) for k, s in _read_samples(flows_uri).items()}


def test_flow_manifest_matches_the_frame_selection(computed, frames_uri):
    out, outputs = computed
    frames = manifest.select(manifest.read_manifest(frames_uri), 1, "test")
    flows = manifest.read_manifest(outputs["flows"])
    assert outputs["flows"] == storage.join(out, "flows")
    assert flows.schema.equals(manifest.MANIFEST_SCHEMA)
    for column in ("key", "label", "class_name", "split_1", "num_frames", "sha256"):
        assert flows.column(column).to_pylist() == frames.column(column).to_pylist(), column
    assert set(flows.column("encoding").to_pylist()) == {flow_shards.FLOW_ENCODING}
    assert manifest.read_classes(outputs["flows"]) == manifest.read_classes(frames_uri)
    assert outputs["flow_bytes"] == sum(flows.column("stored_bytes").to_pylist())
    assert outputs["frame_bytes"] == sum(frames.column("stored_bytes").to_pylist())
    assert outputs["num_pairs"] == sum(n - 1 for n in frames.column("num_frames").to_pylist())
    assert outputs["num_skipped"] == 0 and outputs["chunks_computed"] == 5  # 9 videos, 2 per shard


def test_stored_flows_are_tvl1_of_the_frames(computed, frames_uri):
    _, outputs = computed
    stored = _stored_flows(outputs["flows"])
    key = sorted(stored)[0]
    sample = _read_samples(frames_uri, {key})[key]
    expected = tvl1.window_flows(codec.decode_frames(sample), params=tvl1.TVL1Params(**FAST_TVL1))
    assert stored[key].shape == expected.shape == (15, 48, 64, 2)
    assert np.abs(stored[key].astype(int) - expected.astype(int)).mean() < 1.0  # JPEG 95 of 8-bit flow


def test_rerun_skips_finished_chunks_and_refuses_another_plan(computed, frames_uri, tmp_path):
    out, first = computed
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    again = tvl1_flows.run(_spec(frames_uri), NullTracker(), copy)
    assert again["chunks_reused"] == 5 and again["chunks_computed"] == 0 and again["pairs_per_s"] == 0.0
    storage.delete(storage.join(copy, "flows", "_flows", "chunk-000003.json"))
    partial = tvl1_flows.run(_spec(frames_uri), NullTracker(), copy)
    assert partial["chunks_reused"] == 4 and partial["chunks_computed"] == 1
    assert partial["flow_bytes"] == first["flow_bytes"]
    with pytest.raises(ValueError, match="another plan"):
        tvl1_flows.run(_spec(frames_uri, bound=10.0), NullTracker(), copy)


def test_ray_tasks_give_the_same_flows(computed, frames_uri, tmp_path):
    import ray

    _, local = computed
    started_here = not ray.is_initialized()
    try:
        remote = tvl1_flows.run(_spec(frames_uri, num_tasks=2), NullTracker(), str(tmp_path / "ray"))
    finally:
        if started_here:
            ray.shutdown()
    assert remote["chunks_computed"] == 5 and remote["num_pairs"] == local["num_pairs"]
    assert manifest.read_manifest(remote["flows"]).column("key").to_pylist() == \
        manifest.read_manifest(local["flows"]).column("key").to_pylist()
    a, b = _stored_flows(local["flows"]), _stored_flows(remote["flows"])
    assert a.keys() == b.keys()
    for key in a:  # OpenCV threads differ (1 per Ray task): allow float-order noise
        assert np.abs(a[key].astype(int) - b[key].astype(int)).mean() < 0.05, key


def test_train_temporal_flows_through_launch_writes_weights(computed, tmp_path):
    from h2s_dist.train.launch import launch
    from h2s_dist.specs.common import DataSpec, LoopSpec, ScalingSpec
    from h2s_dist.specs.training import TemporalFlowsSpec

    _, outputs = computed
    spec = TemporalFlowsSpec(
        flows=outputs["flows"], vgg_flavour="tiny",
        data=DataSpec(dataset="", split=1, subset="test", clip_len_frames=CLIP_LEN, crop_size=CROP, batch_size=4,
                      loader_workers=0, shuffle_buffer=4, epoch_length_samples=8),
        loop=LoopSpec(max_steps=3, log_every_steps=1, picture_every_steps=3, checkpoint_every_steps=3),
        scaling=ScalingSpec(num_workers=0),
    )
    from h2s_dist.weights import load_state_dict

    result = launch("train_temporal_flows", spec, str(tmp_path / "train"))
    assert result["steps"] == 3 and result["resumed_from_step"] is None
    weights = load_state_dict(result["tvl1_temporal"])
    assert weights["features.conv1_1.weight"].shape[1] == 2 * (CLIP_LEN - 1)
    assert launch("train_temporal_flows", spec, str(tmp_path / "train"))["resumed_from_step"] == 3


def test_eval_scores_cover_every_test_video_once_and_match_on_the_fly(computed, frames_uri):
    from h2s_dist.models import build_vgg16

    _, outputs = computed
    torch.manual_seed(0)
    vgg = build_vgg16("tiny", in_channels=2 * (CLIP_LEN - 1), num_classes=9)
    parts = [scoring.tvl1_eval_scores(vgg, outputs["flows"], 1, "test", rank=r, world_size=2, num_windows=3,
                                      num_crops=10, crop_size=CROP, batch=16) for r in range(2)]
    keys = [k for p in parts for k in p]
    test_keys = manifest.select(manifest.read_manifest(frames_uri), 1, "test").column("key").to_pylist()
    assert sorted(keys) == sorted(test_keys)
    assert len(keys) == len(set(keys))
    key, (label, cached) = next(iter(parts[0].items()))
    assert cached.shape == (9,)

    sample = _read_samples(frames_uri, {key})[key]
    assert label == codec.sample_meta(sample)["label"]
    frames = codec.decode_frames(sample)
    live = scoring.tvl1_video_scores(vgg, frames, num_windows=3, num_crops=10, crop_size=CROP, batch=16,
                                     params=tvl1.TVL1Params(**FAST_TVL1))
    assert live.num_pairs == 12  # windows start at 0, 4, 8 (step (16 - 5 + 1) // 3): pairs 0..11, each once
    assert live.tvl1_s > 0 and live.cnn_s > 0
    torch.testing.assert_close(live.scores, cached, atol=0.05 * float(cached.abs().max()) + 1e-4, rtol=0)


def test_motionnet_source_writes_the_flow_shards_a_temporal_stream_trains_on(frames_uri, tmp_path):
    from h2s_dist.baseline.motionnet_flows import video_flows
    from h2s_dist.specs.common import DataSpec, LoopSpec, MotionNetSpec
    from h2s_dist.specs.training import TemporalFlowsSpec
    from h2s_dist.train.builders import build_motionnet_from
    from h2s_dist.train.launch import launch
    from h2s_dist.weights import save_state_dict

    torch.manual_seed(0)
    net = build_motionnet_from(MotionNetSpec(flavour="tiny", flow_head_init_std=0.05), 2).eval()
    weights = str(tmp_path / "motionnet.pt")
    save_state_dict(net.state_dict(), weights)
    spec = _spec(frames_uri, source="motionnet", motionnet={"flavour": "tiny"}, motionnet_weights=weights)
    outputs = tvl1_flows.run(spec, NullTracker(), str(tmp_path / "mn"))
    assert flow_shards.read_flow_info(outputs["flows"])["source"] == "motionnet" and outputs["flow_ms_per_pair"] > 0
    assert "tvl1_ms_per_pair" not in outputs
    stored = _stored_flows(outputs["flows"])
    frames = {k: codec.decode_frames(s) for k, s in _read_samples(frames_uri, set(stored)).items()}
    assert len(stored) == 9
    for key, flows in stored.items():
        expected = video_flows(net, frames[key], bound=spec.bound)
        # JPEG (quality 95) moves a quantised value by a few steps at most
        assert flows.shape == expected.shape and np.abs(flows.astype(int) - expected).mean() < 1.0, key

    train = TemporalFlowsSpec(
        flows=outputs["flows"], vgg_flavour="tiny",
        data=DataSpec(dataset="", split=1, subset="test", clip_len_frames=CLIP_LEN, crop_size=CROP, batch_size=4,
                      loader_workers=0, shuffle_buffer=4, epoch_length_samples=8),
        loop=LoopSpec(max_steps=2, log_every_steps=1, picture_every_steps=2, checkpoint_every_steps=2),
    )
    assert launch("train_temporal_flows", train, str(tmp_path / "train"))["steps"] == 2


def test_proxy_stream_brings_each_clips_own_cached_flow_with_the_same_window_crop_and_flip(computed, frames_uri):
    from h2s_dist.data.proxy_stream import ProxyStreamConfig, ProxyTrainStream, normalize_packed, unpack_proxy_batch
    from h2s_dist.data.shards import train_loader
    from h2s_dist.data.transforms import crop_offsets, to_network_input

    _, outputs = computed
    config = ProxyStreamConfig(dataset_uri=frames_uri, batch_size=3, split=1, subset="test", clip_len_frames=CLIP_LEN,
                               crop_size=48, scales=(1.0,), flip=True, shuffle_buffer=4, epoch_length_samples=6,
                               labeled=False, flows_uri=outputs["flows"])
    stream = train_loader(config, rank=0, world_size=1, stream_cls=ProxyTrainStream)
    frames = {k: codec.decode_frames(s) for k, s in _read_samples(frames_uri).items()}
    flows = _stored_flows(outputs["flows"])
    seen_flip = set()
    for _ in range(6):
        clips, proxy = unpack_proxy_batch(normalize_packed(next(stream)[0]), CLIP_LEN)
        for clip, flow, key in zip(clips, proxy, stream.last_keys):
            # The oracle: the one (window, crop position, flip) whose frames are the clip's ...
            found = []
            for start in range(len(frames[key]) - CLIP_LEN + 1):
                for y0, x0 in crop_offsets(48, 64, 48):
                    window = frames[key][start:start + CLIP_LEN, y0:y0 + 48, x0:x0 + 48]
                    for flip in (False, True):
                        candidate = window[:, :, ::-1] if flip else window
                        if torch.equal(to_network_input(candidate), clip):
                            found.append((start, y0, x0, flip))
            assert len({f[3] for f in found}) == 1, (key, found)
            start, y0, x0, flip = found[0]
            seen_flip.add(flip)
            # ... has as proxy the stored flows of that window, cropped, flipped with u negated.
            q = flows[key][start:start + CLIP_LEN - 1, y0:y0 + 48, x0:x0 + 48]
            expected = tvl1.dequantize_flow(q[:, :, ::-1] if flip else q)
            if flip:
                expected[..., 0] *= -1
            expected = torch.from_numpy(np.ascontiguousarray(expected)).permute(0, 3, 1, 2).flatten(0, 1)
            assert torch.allclose(flow, expected, atol=1e-5), key
    assert seen_flip == {False, True}


def test_proxy_guided_pretraining_logs_the_proxy_epe(computed, frames_uri, tmp_path):
    from h2s_dist.specs.training import PretrainSpec
    from h2s_dist.train.launch import launch

    _, outputs = computed
    spec = PretrainSpec(
        motionnet={"flavour": "tiny"}, loss={"proxy_weight": 0.1}, proxy_flows=outputs["flows"], validation=None,
        data={"dataset": frames_uri, "split": 1, "subset": "test", "clip_len_frames": CLIP_LEN, "crop_size": CROP,
              "batch_size": 2, "loader_workers": 0, "shuffle_buffer": 4, "epoch_length_samples": 4},
        optim={"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "milestones": []},
        loop={"max_steps": 2, "log_every_steps": 1, "picture_every_steps": 2, "checkpoint_every_steps": 2},
    )
    result = launch("pretrain_motionnet", spec, str(tmp_path / "proxy"))
    metrics = result["metrics"]
    assert metrics["loss/proxy_epe"] > 0 and metrics["loss/proxy"] == pytest.approx(0.1 * metrics["loss/proxy_epe"], rel=1e-4)
    assert metrics["loss/total"] == pytest.approx(
        metrics["loss/pixel"] + metrics["loss/smooth"] + metrics["loss/ssim"] + metrics["loss/proxy"], rel=1e-4)
