"""The shard readers on real shards: a tiny synthetic dataset ingested into a temp folder
(and copied to the local S3 server), read back through torch DataLoader workers."""

from __future__ import annotations

import itertools
import os
import pathlib
import secrets

import numpy as np
import pytest
import torch

from h2s_dist.data import codec, manifest, shards, storage
from h2s_dist.data.shard_io import iter_samples, read_frame_window
from h2s_dist.data.skips import SkipRecorder
from h2s_dist.data.shards import StreamPosition, TrainStreamConfig, eval_loader, train_loader
from h2s_dist.frames import MEAN_RGB_255
from h2s_dist.train import checkpoint as ckpt
from tests.conftest_parts.data import copy_with_corrupt_samples
from tests.conftest_parts.storage import S3_TEST_BUCKET

pytestmark = pytest.mark.integration

CLIP_LEN = 5
CROP = 32


@pytest.fixture(scope="module")
def dataset(synthetic_dataset_uri) -> str:
    """36 synthetic videos (27 train, 9 test), 16 frames of 48x64, JPEG stacks, 4 + 2 shards."""
    return synthetic_dataset_uri


def _keys(dataset_uri: str, subset: str | None) -> list[str]:
    return manifest.select(manifest.read_manifest(dataset_uri), 1 if subset else None, subset).column("key").to_pylist()


def _num_shards(dataset_uri: str, subset: str) -> int:
    table = manifest.select(manifest.read_manifest(dataset_uri), 1, subset)
    return len(set(table.column("shard").to_pylist()))


def _config(dataset_uri: str, **kw) -> TrainStreamConfig:
    base = dict(batch_size=4, epoch_length_samples=8, clip_len_frames=CLIP_LEN, crop_size=CROP, shuffle_buffer=8)
    return TrainStreamConfig(dataset_uri, **{**base, **kw})


def _eval_keys(dataset_uri: str, **kw) -> list[str]:
    keys = []
    for rank in range(2):
        loader = eval_loader(dataset_uri, 1, "test", rank=rank, world_size=2, clip_len_frames=CLIP_LEN,
                             crop_size=CROP, num_windows=3, **kw)
        keys += [item.key for item in loader]
        assert not loader.skipped
    return keys


# ----------------------------------------------------------------------------- evaluation


def test_eval_assignment_partitions_keys_over_ranks_and_workers():
    keys = [f"k{i}" for i in range(11)]
    for shard_of in (["s0"] * 11, [f"s{i // 3}" for i in range(11)], [f"s{i}" for i in range(11)]):
        slots = [shards.eval_assignment(keys, shard_of, rank=r, world_size=2, worker=w, num_workers=3)
                 for r in range(2) for w in range(3)]
        assert sorted(k for s in slots for k in s) == sorted(keys)
        assert all(slots)  # 11 videos are enough for 6 slots, whatever the shards


def test_eval_assignment_gives_each_shard_to_one_slot_when_shards_suffice():
    keys = [f"k{i}" for i in range(20)]
    shard_of = [f"s{i // 4}" for i in range(18)] + ["s5", "s5"]  # 6 shards of 4, 4, 4, 4, 2 + 2 videos
    owners: dict[str, set] = {}
    for r in range(2):
        for w in range(2):
            for k in shards.eval_assignment(keys, shard_of, rank=r, world_size=2, worker=w, num_workers=2):
                owners.setdefault(shard_of[keys.index(k)], set()).add((r, w))
    assert sorted(owners) == [f"s{i}" for i in range(6)] and all(len(o) == 1 for o in owners.values())
    rank0 = shards.eval_assignment(keys, shard_of, rank=0, world_size=2, worker=0, num_workers=1)
    assert rank0 == keys[:8] or rank0 == keys[:12]  # a shard boundary near the middle


def test_eval_assignment_splits_a_shard_rather_than_leave_a_rank_idle():
    keys = [f"k{i}" for i in range(9)]
    shard_of = ["s0"] * 8 + ["s1"]  # the synthetic test split: one big shard and one video
    sizes = [len(shards.eval_assignment(keys, shard_of, rank=r, world_size=2, worker=0, num_workers=1))
             for r in range(2)]
    assert sorted(sizes) == [4, 5]


def test_eval_reads_each_test_shard_once_over_ranks(make_synthetic_dataset, monkeypatch):
    from h2s_dist.data import shard_io

    dataset = make_synthetic_dataset(shard_target_bytes=400_000)  # ~2 videos a shard: 5 test shards
    opened, real_open = [], shard_io.open_shard
    monkeypatch.setattr(shard_io, "open_shard", lambda uri, cache=None: opened.append(uri) or real_open(uri, cache))
    keys = _eval_keys(dataset)  # 2 ranks, in this process
    assert sorted(keys) == sorted(_keys(dataset, "test"))
    assert len(opened) == _num_shards(dataset, "test") == len(set(opened)) >= 4


def test_eval_stream_yields_every_test_video_exactly_once_over_2_ranks_x_2_workers(dataset):
    assert _num_shards(dataset, "test") < 4  # fewer shards than rank x worker slots on purpose
    keys = _eval_keys(dataset, num_workers=2)
    assert sorted(keys) == sorted(_keys(dataset, "test"))


def test_eval_item_holds_windows_x_ten_crops_with_flip_flags(dataset):
    loader = eval_loader(dataset, 1, "test", rank=0, world_size=1, clip_len_frames=CLIP_LEN, crop_size=CROP,
                         num_windows=3)
    item = next(iter(loader))
    table = manifest.read_manifest(dataset)
    labels = dict(zip(table.column("key").to_pylist(), table.column("label").to_pylist()))
    assert item.clips.shape == (30, CLIP_LEN, 3, CROP, CROP) and item.clips.dtype == torch.float32
    assert item.flipped.tolist() == ([False] * 5 + [True] * 5) * 3
    assert item.label == labels[item.key]
    # crop 5 of a window is crop 0 mirrored
    assert torch.equal(item.clips[5], item.clips[0].flip(-1))


def test_eval_stream_decodes_mp4_shards_too(make_synthetic_dataset):
    uri = make_synthetic_dataset(encoding="mp4")
    loader = eval_loader(uri, 1, "test", rank=0, world_size=3, clip_len_frames=CLIP_LEN, crop_size=CROP,
                         num_windows=2, num_crops=1)
    items = list(loader)
    assert [i.key for i in items] == loader.keys and set(loader.keys) <= set(_keys(uri, "test"))
    assert items and not loader.skipped
    assert items[0].clips.shape == (2, CLIP_LEN, 3, CROP, CROP)


def test_train_and_eval_streams_read_h264_shards_as_the_frames_of_a_decode_from_frame_0(make_synthetic_dataset):
    """The default encoding through both readers: a window decoded from the keyframe before it
    is the slice of the whole clip decoded from frame 0 (so crops of it are too)."""
    uri = make_synthetic_dataset(encoding="h264")
    assert set(manifest.read_manifest(uri).column("encoding").to_pylist()) == {"h264"}
    items = list(eval_loader(uri, 1, "test", rank=0, world_size=1, clip_len_frames=CLIP_LEN, crop_size=CROP,
                             num_windows=3, num_crops=1))
    assert len(items) == len(_keys(uri, "test")) and items[0].clips.shape == (3, CLIP_LEN, 3, CROP, CROP)
    loader = train_loader(_config(uri), rank=0, world_size=1)
    clips, _ = next(loader)
    assert clips.shape == (4, CLIP_LEN, 3, CROP, CROP) and not loader.skipped
    sample = next(s for s in iter_samples([manifest.shard_uri(uri, manifest.read_manifest(uri)["shard"][0].as_py())],
                                          set(_keys(uri, None)), SkipRecorder(), None))
    full = codec.decode_frames(sample)
    for start in range(len(full) - CLIP_LEN + 1):
        np.testing.assert_array_equal(read_frame_window(sample, start, CLIP_LEN, len(full)), full[start:start + CLIP_LEN])


def test_max_videos_spreads_a_few_videos_over_the_selection(dataset):
    """max_videos (calibration sets) keeps evenly spaced videos of the list, not its first ones."""
    train = _keys(dataset, "train")
    loader = eval_loader(dataset, 1, "train", rank=0, world_size=1, clip_len_frames=CLIP_LEN, crop_size=CROP,
                         num_windows=1, num_crops=1, max_videos=3)
    keys = [item.key for item in loader]
    assert sorted(keys, key=train.index) == [train[i * len(train) // 3] for i in range(3)]


def test_eval_crop_larger_than_frames_is_a_value_error(dataset):
    with pytest.raises(ValueError, match="crop_size"):
        eval_loader(dataset, 1, "test", rank=0, world_size=1, crop_size=64)


# ----------------------------------------------------------------------------- training


def test_shards_for_worker_partitions_shards_per_epoch_and_shares_when_too_few():
    uris = [f"s{i}" for i in range(7)]
    slots = [shards.shards_for_worker(uris, seed=3, epoch=0, global_worker=g, num_global_workers=4) for g in range(4)]
    assert sorted(u for s in slots for u in s) == uris
    other_epoch = [shards.shards_for_worker(uris, seed=3, epoch=1, global_worker=g, num_global_workers=4)
                   for g in range(4)]
    assert other_epoch != slots
    assert sorted(shards.shards_for_worker(uris[:3], seed=3, epoch=0, global_worker=2, num_global_workers=4)) == uris[:3]


def test_train_batches_have_shapes_dtypes_labels_and_normalised_range(dataset):
    loader = train_loader(_config(dataset), rank=0, world_size=1)
    table = manifest.read_manifest(dataset)
    label_of = dict(zip(table.column("key").to_pylist(), table.column("label").to_pylist()))
    train_keys = set(_keys(dataset, "train"))
    for clips, labels in itertools.islice(loader, 2):  # one epoch; the stream goes on
        assert clips.shape == (4, CLIP_LEN, 3, CROP, CROP) and clips.dtype == torch.uint8
        assert labels.dtype == torch.int64
        assert labels.tolist() == [label_of[k] for k in loader.last_keys]
        assert set(loader.last_keys) <= train_keys
        x = loader.to_network_input(clips)
        low = -max(MEAN_RGB_255) / 255
        assert x.dtype == torch.float32 and x.shape == clips.shape
        assert x.min() >= low - 1e-6 and x.max() <= (255 - min(MEAN_RGB_255)) / 255 + 1e-6
    assert loader.position == StreamPosition(epoch=1, samples=0, seed=0)


def test_train_ranks_read_disjoint_videos(dataset):
    assert _num_shards(dataset, "train") >= 4
    seen = []
    for rank in range(2):
        loader = train_loader(_config(dataset, num_workers=2, epoch_length_samples=16), rank=rank, world_size=2)
        keys = set()
        for _ in itertools.islice(loader, 4):  # one epoch
            keys |= set(loader.last_keys)
        seen.append(keys)
    assert seen[0] and seen[1] and not seen[0] & seen[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_resumed_from_its_checkpoint_yields_the_batches_of_the_uninterrupted_one(dataset, num_workers):
    """What fit does, LocalSession-style: checkpoint the stream's position, write it to a
    checkpoint file, read it back in a new stream. Both streams then yield the same batches,
    into the next epoch."""
    config = _config(dataset, epoch_length_samples=12, num_workers=num_workers)  # 3 batches per epoch
    straight = train_loader(config, rank=0, world_size=1)
    for _ in range(2):
        next(straight)
    position = straight.checkpoint()
    assert position == StreamPosition(epoch=0, samples=8, seed=0)
    saved = ckpt.from_bytes(ckpt.to_bytes({"data": [position], "spec_hash": "h"}), expected_spec_hash="h", where="t")
    resumed = train_loader(config, rank=0, world_size=1, position=saved["data"][0])
    for _ in range(3):  # the last of epoch 0, then two of epoch 1
        (c0, l0), (c1, l1) = next(straight), next(resumed)
        assert torch.equal(c0, c1) and torch.equal(l0, l1) and straight.last_keys == resumed.last_keys
    assert straight.position == resumed.position == StreamPosition(epoch=1, samples=8, seed=0)
    with pytest.raises(ValueError, match="whole number of batches"):
        train_loader(config, rank=0, world_size=1, position=StreamPosition(samples=6))


def test_unlabeled_stream_reads_all_videos_with_label_minus_one(dataset):
    config = _config(dataset, split=None, subset=None, labeled=False, epoch_length_samples=24, shuffle_buffer=4)
    loader = train_loader(config, rank=0, world_size=1)
    keys = set()
    for _, labels in itertools.islice(loader, 6):  # one epoch
        assert (labels == -1).all()
        keys |= set(loader.last_keys)
    assert keys & set(_keys(dataset, "test")) and keys & set(_keys(dataset, "train"))


def test_corrupt_sample_is_skipped_and_listed(dataset, tmp_path):
    """Copy the dataset, garble one test video's JPEG stack: both streams list it as skipped
    and go on with the other videos."""
    victim = _keys(dataset, "test")[0]
    copy_with_corrupt_samples(dataset, tmp_path, [victim])
    loader = eval_loader(str(tmp_path), 1, "test", rank=0, world_size=1, clip_len_frames=CLIP_LEN, crop_size=CROP,
                         num_windows=2, num_crops=1)
    keys = [item.key for item in loader]
    assert sorted(keys) == sorted(set(_keys(dataset, "test")) - {victim})
    assert [s.key for s in loader.skipped] == [victim]
    assert loader.skipped[0].source.endswith(".tar") and loader.skipped[0].reason
    train = train_loader(_config(str(tmp_path), subset="test", epoch_length_samples=24), rank=0, world_size=1)
    assert all(len(labels) == 4 for _, labels in itertools.islice(train, 6))
    assert train.skipped and {s.key for s in train.skipped} == {victim}


def test_missing_shards_stop_the_train_stream_loudly(dataset, tmp_path):
    for name in ("manifest.parquet", "classes.json"):
        (tmp_path / name).write_bytes((pathlib.Path(dataset) / name).read_bytes())
    with pytest.raises(RuntimeError, match="gave no sample"):
        next(iter(train_loader(_config(str(tmp_path)), rank=0, world_size=1)))


# ----------------------------------------------------------------------------- s3 and cache


@pytest.fixture(scope="module")
def s3_copy(dataset, s3_server) -> str:
    """The dataset copied once to the local S3 server (manifest, classes, shards); its URI."""
    root, uri = pathlib.Path(dataset), f"s3://{S3_TEST_BUCKET}/readers-{secrets.token_hex(3)}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env().items():
            env.setenv(name, value)
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "_ingest" not in p.parts):
            storage.write_bytes(storage.join(uri, *path.relative_to(root).parts), path.read_bytes())
    return uri


@pytest.fixture
def s3_dataset(s3_copy, s3_env) -> str:
    """s3_copy with the environment pointing at the server for this test."""
    return s3_copy


def test_s3_eval_stream_equals_the_local_one(dataset, s3_dataset):
    local = eval_loader(dataset, 1, "test", rank=1, world_size=2, clip_len_frames=CLIP_LEN, crop_size=CROP,
                        num_windows=2, num_crops=1)
    remote = eval_loader(s3_dataset, 1, "test", rank=1, world_size=2, clip_len_frames=CLIP_LEN, crop_size=CROP,
                         num_windows=2, num_crops=1, num_workers=2)
    a = {i.key: i.clips for i in local}
    b = {i.key: i.clips for i in remote}  # two workers: the order interleaves, the set does not
    assert sorted(a) == sorted(b) == sorted(local.keys) and len(a) in (4, 5)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_s3_train_stream_with_cache_downloads_each_shard_once(s3_dataset, tmp_path, monkeypatch):
    opened = []
    real_open = storage.open_uri
    monkeypatch.setattr(storage, "open_uri", lambda uri, mode="rb": opened.append(uri) or real_open(uri, mode))
    config = _config(s3_dataset, cache_dir=str(tmp_path / "cache"), epoch_length_samples=16, shuffle_buffer=4)
    for _ in range(2):
        for clips, _ in itertools.islice(train_loader(config, rank=0, world_size=1), 4):  # one epoch
            assert clips.shape == (4, CLIP_LEN, 3, CROP, CROP)
    cached = [p for p in os.listdir(tmp_path / "cache") if p.endswith(".tar")]
    assert opened and sorted(opened) == sorted(set(opened))  # each shard fetched at most once
    assert len(cached) == len(opened)
    assert not [p for p in os.listdir(tmp_path / "cache") if p.startswith(".partial-")]


# ----------------------------------------------------------------------------- relocation


def _moved(dataset_uri: str, tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(old place, new place) of a copy of the dataset ingested at the old place and moved."""
    import shutil

    old, new = tmp_path / "laptop" / "ds", tmp_path / "mounted" / "elsewhere"
    shutil.copytree(dataset_uri, old)
    new.parent.mkdir(parents=True)
    shutil.move(old, new)
    assert not old.exists()
    return old, new


def _reads_every_video(uri: str) -> None:
    loader = train_loader(_config(uri), rank=0, world_size=1)
    for _ in itertools.islice(loader, 2):
        assert set(loader.last_keys) <= set(_keys(uri, "train"))
    assert not loader.skipped
    assert sorted(_eval_keys(uri)) == sorted(_keys(uri, "test"))


def test_a_moved_dataset_reads_from_where_it_now_lives(dataset, tmp_path):
    _, new = _moved(dataset, tmp_path)
    assert all(s.startswith("shards/") for s in manifest.read_manifest(str(new)).column("shard").to_pylist())
    _reads_every_video(str(new))


def test_a_moved_dataset_with_an_older_manifest_of_full_paths_reads_too(dataset, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    old, new = _moved(dataset, tmp_path)
    table = manifest.read_manifest(str(new))
    full = pa.array([str(old / s) for s in table.column("shard").to_pylist()], pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("shard"), "shard", full), new / manifest.MANIFEST_NAME)
    assert manifest.read_manifest(str(new)).column("shard")[0].as_py().startswith(str(old))
    _reads_every_video(str(new))
