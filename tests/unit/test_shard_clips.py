"""The one per-sample decode both feeds call: `TrainStream.shard_clips` (the Ray Data feed's
unit of work, `ray_feed.decode_shard`) and `TrainStream.sample_clips` (the DataLoader feed).
No Ray: decode_shard is a plain generator that Ray Data runs as a task.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import torch

from h2s_dist.data.ray_feed import decode_shard
from h2s_dist.data.shards import StreamPosition, TrainStream, TrainStreamConfig, stream_videos
from h2s_dist.data.skips import SkipRecorder
from tests.conftest_parts.data import copy_with_corrupt_samples

CLIP_LEN, CROP = 5, 32


def _config(uri: str, **kw) -> TrainStreamConfig:
    return TrainStreamConfig(uri, batch_size=4, clip_len_frames=CLIP_LEN, crop_size=CROP, **kw)


def _stream(config: TrainStreamConfig, stream_cls=TrainStream) -> TrainStream:
    return stream_cls(config, stream_videos(config, stream_cls), 0, 1, StreamPosition())


def _first_shard(stream: TrainStream) -> tuple[str, list[str]]:
    shard = stream.shards[0]
    return shard, [v.key for v in stream.videos.values() if v.shard == shard]


def test_a_shard_gives_views_per_decode_clips_of_each_selected_sample(synthetic_dataset_uri):
    stream = _stream(_config(synthetic_dataset_uri, views_per_decode=2))
    shard, keys = _first_shard(stream)
    recorder = SkipRecorder()
    clips = list(stream.shard_clips(shard, np.random.default_rng(0), recorder))
    assert collections.Counter(key for _, _, key in clips) == {key: 2 for key in keys}
    assert all(c.dtype == torch.uint8 and c.shape == (CLIP_LEN, 3, CROP, CROP) for c, _, _ in clips)
    assert all(label == stream.videos[key].label for _, label, key in clips)
    assert not recorder.skipped


class MarkedStream(TrainStream):
    """make_clip replaced by a marker: the clip is filled with the sample's position in its video list."""

    def make_clip(self, sample, video, rng):
        marker = sorted(self.videos).index(video.key) % 256
        return torch.full((CLIP_LEN, 3, CROP, CROP), marker, dtype=torch.uint8)


def test_the_ray_data_task_makes_its_clips_with_the_stream_class_make_clip(synthetic_dataset_uri):
    config = _config(synthetic_dataset_uri)
    videos = stream_videos(config)
    stream = _stream(config, MarkedStream)
    shard, keys = _first_shard(stream)
    rows = list(decode_shard({"shard": shard}, config=config, stream_cls=MarkedStream, videos=videos))
    assert sorted(r["key"] for r in rows) == sorted(keys)
    for row in rows:  # the row is what MarkedStream.make_clip made, as uint8 numpy
        assert row["clip"].dtype == np.uint8
        assert (row["clip"] == sorted(stream.videos).index(row["key"]) % 256).all()
        assert row["label"] == stream.videos[row["key"]].label and json.loads(row["skipped"]) == []


def test_a_corrupt_sample_is_skipped_and_its_record_travels_with_a_clip(synthetic_dataset_uri, tmp_path):
    videos = stream_videos(_config(synthetic_dataset_uri))
    shard = videos[0].shard
    keys = [v.key for v in videos if v.shard == shard]
    victim = keys[-1]  # the last sample: its record rides on the clip before it
    uri = copy_with_corrupt_samples(synthetic_dataset_uri, tmp_path / "bad", [victim])
    config = _config(uri)
    videos = stream_videos(config)
    rows = list(decode_shard({"shard": videos[0].shard}, config=config, stream_cls=TrainStream, videos=videos))
    assert sorted(r["key"] for r in rows) == sorted(k for k in keys if k != victim)
    skipped = [s for r in rows for s in json.loads(r["skipped"])]
    assert [s["key"] for s in skipped] == [victim]
