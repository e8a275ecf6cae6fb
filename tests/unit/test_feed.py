"""The feed's small parts on CPU, without shards: the bounded shard cache (least recently
used, by bytes; a full disk streams instead), uint8 clips normalised where they land, the
batch numbering that lets one DataLoader serve every epoch, and sampling with replacement.

    PYTHONPATH=. python -m pytest tests/unit/test_feed.py
"""

from __future__ import annotations

import errno
import io
import os
import shutil

import numpy as np
import pytest
import torch

from h2s_dist.data import shards, storage, transforms
from h2s_dist.data.flow_shards import FlowTrainStream
from h2s_dist.data.shard_io import ShardCache, cached_shard_path, evict_least_recently_used, open_shard
from h2s_dist.frames import normalize

KB = 1024


@pytest.fixture
def remote(monkeypatch):
    """Fake remote shards: s3://fake/<name> of `sizes[name]` bytes; `fetched` lists downloads."""
    sizes: dict[str, int] = {}
    fetched: list[str] = []

    def open_uri(uri, mode="rb"):
        fetched.append(uri)
        return io.BytesIO(b"x" * sizes[uri.rsplit("/", 1)[1]])

    monkeypatch.setattr(storage, "open_uri", open_uri)
    return sizes, fetched


def _cached(cache_dir) -> dict[str, int]:
    return {e.name.split("-", 1)[1]: e.stat().st_size for e in os.scandir(cache_dir)
            if not e.name.startswith(".") and not e.name.endswith(".lock")}


def test_cache_keeps_the_most_recently_used_shards_within_its_byte_bound(tmp_path, remote):
    sizes, fetched = remote
    sizes.update({f"s{i}.tar": 10 * KB for i in range(4)})
    cache = ShardCache(str(tmp_path), max_bytes=25 * KB)  # room for two shards
    for tick, name in enumerate(("s0.tar", "s1.tar", "s0.tar", "s2.tar")):  # s0 used again: s1 is the oldest
        with open_shard(f"s3://fake/{name}", cache) as f:
            assert len(f.read()) == 10 * KB
        os.utime(cached_shard_path(f"s3://fake/{name}", cache), (0, tick))  # a clock coarse tests can trust
    assert sorted(_cached(tmp_path)) == ["s0.tar", "s2.tar"]
    assert fetched == ["s3://fake/s0.tar", "s3://fake/s1.tar", "s3://fake/s2.tar"]  # s0's second read: a hit
    with open_shard("s3://fake/s1.tar", cache):  # evicted: fetched again, and s0 goes now
        pass
    assert sorted(_cached(tmp_path)) == ["s1.tar", "s2.tar"] and fetched[-1] == "s3://fake/s1.tar"


def test_eviction_deletes_oldest_first_and_never_the_shard_just_fetched(tmp_path):
    for i, size in enumerate([5, 5, 5, 30]):
        path = tmp_path / f"{i}-s{i}.tar"
        path.write_bytes(b"x" * size)
        os.utime(path, (0, 100 + i))
    (tmp_path / ".partial-abc").write_bytes(b"x" * 100)  # a download in flight: not a shard
    deleted = evict_least_recently_used(str(tmp_path), 12, keep=str(tmp_path / "3-s3.tar"))
    assert [os.path.basename(p) for p in deleted] == ["0-s0.tar", "1-s1.tar", "2-s2.tar"]
    assert _cached(tmp_path) == {"s3.tar": 30}  # larger than the bound alone, but the one in use


def test_a_full_disk_streams_the_shard_instead_of_failing(tmp_path, remote, monkeypatch):
    sizes, fetched = remote
    sizes["s0.tar"] = 3 * KB

    def disk_full(src, dst, length=0):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", disk_full)
    with open_shard("s3://fake/s0.tar", ShardCache(str(tmp_path), 10 * KB)) as f:
        assert len(f.read()) == 3 * KB
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".partial-")]
    assert fetched == ["s3://fake/s0.tar"] * 2  # the failed download, then the stream


def test_unbounded_cache_from_a_folder_path_keeps_everything(tmp_path, remote):
    sizes, _ = remote
    sizes.update({f"s{i}.tar": KB for i in range(3)})
    for i in range(3):
        open_shard(f"s3://fake/s{i}.tar", str(tmp_path)).close()
    assert len(_cached(tmp_path)) == 3
    with pytest.raises(ValueError, match="max_bytes"):
        ShardCache(str(tmp_path), 0)


def test_uint8_clip_normalised_on_arrival_equals_the_float_clip_of_before():
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    clip = transforms.channels_first(frames)
    assert clip.dtype == torch.uint8 and clip.shape == (5, 3, 8, 6) and clip.is_contiguous()
    assert torch.equal(normalize(clip), transforms.to_network_input(frames))
    assert clip.element_size() * 4 == transforms.to_network_input(frames).element_size()  # 4x fewer bytes
    q = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    assert FlowTrainStream.to_network_input(q).tolist() == [[-128.0, 0.0, 127.0]]


@pytest.mark.parametrize("num_workers", [1, 2, 3, 5])
def test_round_robin_batch_numbers_split_any_run_of_epochs_among_workers(num_workers):
    """Worker w makes the batches g % W == w of the whole stream; per epoch its count is the
    difference of _count_congruent at the epoch's ends, so the counts of every epoch add up
    to the epoch, and the DataLoader's round robin meets them in order g = 0, 1, 2, ..."""
    epochs = [2, 3, 3, 3]  # a resumed first epoch (2 left), then 3 per epoch
    done, owner = 0, []
    for length in epochs:
        counts = [shards._count_congruent(done + length, w, num_workers) - shards._count_congruent(done, w, num_workers)
                  for w in range(num_workers)]
        assert sum(counts) == length
        owner += [w for g in range(done, done + length) for w in [g % num_workers]]
        done += length
    assert owner == [g % num_workers for g in range(sum(epochs))]


def test_shards_are_drawn_with_replacement_uniformly():
    """The train stream samples shards with replacement: every shard about equally often,
    repeats within a pass, whatever came before (the property a resume relies on)."""
    names = [f"s{i}" for i in range(5)]
    count = [0]
    drawn = []
    for name in shards._resampled(names, np.random.default_rng(7), count):
        count[0] += 1  # every shard gives a sample
        drawn.append(name)
        if len(drawn) == 5000:
            break
    freq = np.array([drawn.count(n) for n in names]) / len(drawn)
    assert np.abs(freq - 0.2).max() < 0.02
    assert len(set(drawn[:5])) < 5 or len(set(drawn[5:10])) < 5  # with replacement: repeats happen
