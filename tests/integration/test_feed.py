"""The training feed on real shards (a tiny synthetic dataset ingested into a temp folder):
several views per sample read, one DataLoader for every epoch, and what a resume keeps
exactly and what only statistically.

    PYTHONPATH=. python -m pytest tests/integration/test_feed.py
"""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
import torch

from h2s_dist.data import manifest, shard_io
from h2s_dist.data.shards import StreamPosition, TrainStream, TrainStreamConfig, train_loader

pytestmark = pytest.mark.integration

CLIP_LEN = 5
CROP = 32


def _config(dataset_uri: str, **kw) -> TrainStreamConfig:
    base = dict(batch_size=4, epoch_length_samples=12, clip_len_frames=CLIP_LEN, crop_size=CROP, shuffle_buffer=4)
    return TrainStreamConfig(dataset_uri, **{**base, **kw})


class RecordingStream(TrainStream):
    """TrainStream that records, per view made, the id of the sample it was made from."""

    views: list[tuple[int, str]] = []
    tags = itertools.count()

    def make_clip(self, sample, video, rng):
        RecordingStream.views.append((sample.setdefault("read", next(self.tags)), video.key))
        return super().make_clip(sample, video, rng)


def test_one_sample_read_gives_views_per_decode_different_clips(synthetic_dataset_uri):
    RecordingStream.views = []
    k, clips_out = 3, 8
    loader = train_loader(_config(synthetic_dataset_uri, views_per_decode=k), rank=0, world_size=1,
                          stream_cls=RecordingStream)
    batches = [next(loader) for _ in range(clips_out // 4)]
    per_sample = collections.Counter(sample for sample, _ in RecordingStream.views)
    assert set(per_sample.values()) == {k}  # every sample read gave k views
    # the views shuffle holds k x batch clips, so samples read = (12 + 8) / 3, not 8 + 12 as with k = 1
    assert len(per_sample) <= -(-(k * 4 + clips_out) // k)
    clips = torch.cat([c for c, _ in batches])
    assert clips.dtype == torch.uint8 and clips.shape == (clips_out, CLIP_LEN, 3, CROP, CROP)
    assert len({c.numpy().tobytes() for c in clips}) == clips_out  # each view its own window / crop / flip


def test_one_dataloader_and_one_manifest_read_serve_every_epoch(synthetic_dataset_uri, monkeypatch):
    reads, real_read = [], manifest.read_manifest
    monkeypatch.setattr(manifest, "read_manifest", lambda uri: reads.append(uri) or real_read(uri))
    loader = train_loader(_config(synthetic_dataset_uri, num_workers=2), rank=0, world_size=1)  # 3 batches/epoch
    for _ in range(10):  # into the 4th epoch
        next(loader)
    assert loader.position == StreamPosition(epoch=3, samples=4)
    assert loader.num_dataloaders == 1 and len(reads) == 1
    loader.checkpoint()  # the only thing that restarts it (see the resume tests)
    next(loader)
    assert loader.num_dataloaders == 2 and len(reads) == 1


def test_resume_is_exact_with_the_same_workers_and_equivalent_with_other_ones(synthetic_dataset_uri):
    """Exact: the same config, rank, world size and loader workers give, after a checkpoint,
    bit for bit the batches of the run that wrote it. Statistically equivalent: with other
    loader workers (or views_per_decode) the position, the epoch boundaries and the shards
    of every epoch are the same, the clips are other draws from the same distribution."""
    config = _config(synthetic_dataset_uri, num_workers=2)
    straight = train_loader(config, rank=0, world_size=1)
    for _ in range(4):
        next(straight)
    position = straight.checkpoint()
    exact = train_loader(config, rank=0, world_size=1, position=position)
    other = train_loader(_config(synthetic_dataset_uri, num_workers=0, views_per_decode=2), rank=0, world_size=1,
                         position=position)
    train_keys = set(manifest.select(manifest.read_manifest(synthetic_dataset_uri), 1, "train")
                     .column("key").to_pylist())
    differ = False
    for _ in range(5):  # across the end of epoch 1 into epoch 2
        a, b, c = next(straight), next(exact), next(other)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        differ |= not torch.equal(a[0], c[0])
        assert set(other.last_keys) <= train_keys and c[0].shape == a[0].shape
        assert straight.position == exact.position == other.position
    assert straight.position == StreamPosition(epoch=3, samples=0) and differ


def test_samples_drawn_cover_the_videos_about_evenly(synthetic_dataset_uri, monkeypatch):
    """Sampling with replacement, as a resumed stream does too: over many draws every training
    video shows up, none far more than its share."""
    drawn, real_iter = [], shard_io.iter_samples

    def counting(*args, **kw):
        for sample in real_iter(*args, **kw):
            drawn.append(sample["__key__"])
            yield sample

    monkeypatch.setattr("h2s_dist.data.shards.iter_samples", counting)
    config = _config(synthetic_dataset_uri, views_per_decode=4, epoch_length_samples=40, batch_size=20)
    loader = train_loader(config, rank=0, world_size=1)
    for _ in range(12):
        next(loader)
    counts = np.array(list(collections.Counter(drawn).values()))
    num_train = len(manifest.select(manifest.read_manifest(synthetic_dataset_uri), 1, "train"))
    assert len(drawn) >= 240 // 4 and len(counts) == num_train and counts.max() <= 3 * len(drawn) / num_train


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_uint8_batches_normalise_on_the_gpu_as_on_the_cpu(synthetic_dataset_uri):
    from h2s_dist.train.task import StreamTask

    loader = train_loader(_config(synthetic_dataset_uri, num_workers=1, pin_memory=True), rank=0, world_size=1)
    clips, _ = next(loader)
    assert clips.is_pinned() and clips.dtype == torch.uint8
    on_gpu = StreamTask().network_input(clips, torch.device("cuda"))
    assert on_gpu.device.type == "cuda" and torch.allclose(on_gpu.cpu(), loader.to_network_input(clips))
