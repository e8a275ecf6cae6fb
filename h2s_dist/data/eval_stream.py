"""The test-time reader: every selected video once, as windows x crops.

    for item in eval_loader(uri, split=1, rank=0, world_size=1):
        item.clips                      # (num_windows * num_crops, T, 3, H, W), window-major
        item.flipped                    # (num_windows * num_crops,) bool: negate u of a TV-L1 flow

A generator stage run inside torch DataLoader workers: eval_assignment (this rank x worker's
videos, whole shards where there are enough) -> their shards in manifest order (h2s_dist.data.shard_io) -> decode the windows of
transforms.eval_window_starts -> ten crops. No resampling, no shuffling. The flow reader
(h2s_dist.data.flow_shards) is `eval_loader(..., stream_cls=FlowEvalStream)`: the same
assignment and skips, another `make_inputs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from h2s_dist.data import transforms
from h2s_dist.data.shard_io import (
    ShardCache,
    Video,
    check_rank,
    iter_samples,
    read_frame_window,
    selected_videos,
    worker_slot,
)
from h2s_dist.data.skips import Skip, SkipRecorder


@dataclass
class EvalItem:
    """All test inputs of one video. clips: (num_windows * num_crops, T, 3, H, W), index
    window * num_crops + crop, crops in transforms.ten_crops order; flipped: (N,) bool."""

    key: str
    label: int
    clips: torch.Tensor
    flipped: torch.Tensor


def eval_assignment(keys: Sequence[str], shards: Sequence[str], *, rank: int, world_size: int, worker: int,
                    num_workers: int) -> list[str]:
    """The videos one DataLoader worker of one rank evaluates; shards[i] holds keys[i].

    Ranks take contiguous blocks of the videos in manifest (= shard) order, and inside a
    rank the workers take contiguous blocks of the rank's, with block ends moved to a shard
    boundary where one is near (`_shard_blocks`): when every shard holds at most half a
    block's videos, each shard is read by one rank x worker slot only, once per evaluation.
    Every key lands in exactly one (rank, worker) slot, whatever the number of shards.
    """
    lo, hi = _shard_blocks(shards, world_size)[rank]
    keys, shards = list(keys[lo:hi]), list(shards[lo:hi])
    lo, hi = _shard_blocks(shards, num_workers)[worker]
    return keys[lo:hi]


def _shard_blocks(shards: Sequence[str], parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [lo, hi) blocks covering range(len(shards)), of about len / parts
    each. A block's end moves to the nearest end of a run of equal shards when that is less
    than half a block away (so the load stays within 0.5x to 1.5x of an equal share); else a
    shard is split between two blocks (few, large shards: balance before reading once)."""
    n = len(shards)
    cuts = [i for i in range(1, n) if shards[i] != shards[i - 1]]  # run boundaries inside
    chosen = [0]
    for i in range(1, parts):
        ideal = i * n / parts
        near = min(cuts, key=lambda c: abs(c - ideal), default=None)
        end = near if near is not None and abs(near - ideal) < n / parts / 2 else round(ideal)
        chosen.append(max(end, chosen[-1]))
    chosen.append(n)
    return list(zip(chosen[:-1], chosen[1:]))


class EvalStream(IterableDataset):
    """Yields ("item", key, label, clips, flipped, skips) per video and ("skip", skips) entries.

    Subclasses change what a video becomes by overriding `make_inputs` (and the class
    attributes `content`, `min_clip_len_frames` that eval_loader checks against).
    """

    content: ClassVar[str] = "frame"
    """What the dataset stores (frame or flow), for messages."""
    min_clip_len_frames: ClassVar[int] = 1
    """Smallest clip_len_frames that gives an input."""

    def __init__(self, videos: list[Video], rank: int, world_size: int, clip_len_frames: int, crop_size: int,
                 num_windows: int, num_crops: int, cache_dir: ShardCache | str | None, normalized: bool) -> None:
        self.videos, self.rank, self.world_size = videos, rank, world_size
        self.clip_len, self.crop_size, self.num_windows, self.num_crops = clip_len_frames, crop_size, num_windows, num_crops
        self.cache_dir, self.normalized = cache_dir, normalized

    def __iter__(self) -> Iterator[tuple]:
        worker, num_workers = worker_slot()
        by_key = {v.key: v for v in self.videos}
        keys = eval_assignment([v.key for v in self.videos], [v.shard for v in self.videos], rank=self.rank,
                               world_size=self.world_size, worker=worker, num_workers=num_workers)
        shards = list(dict.fromkeys(by_key[k].shard for k in keys))  # manifest order, unique
        recorder, pending = SkipRecorder(), set(keys)
        for sample in iter_samples(shards, pending.copy(), recorder, self.cache_dir):
            key = sample["__key__"]
            if key not in pending:  # a duplicate key in the shards: keep the first copy only
                continue
            pending.discard(key)
            try:
                clips, flipped = self.make_inputs(sample, by_key[key].num_frames)
            except Exception as exn:
                recorder.record(key, sample.get("__url__"), exn)
                yield ("skip", recorder.drain())
                continue
            yield ("item", key, by_key[key].label, clips, flipped, recorder.drain())
        for key in sorted(pending, key=keys.index):
            recorder.record(key, by_key[key].shard, "sample not found in its shard")
        yield ("skip", recorder.drain())

    def make_inputs(self, sample: dict, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample -> (clips (num_windows * num_crops, T, 3, crop, crop), flipped (N,) bool)."""
        starts = transforms.eval_window_starts(num_frames, self.clip_len, self.num_windows)
        frames = read_frame_window(sample, 0, starts[-1] + self.clip_len, num_frames)
        crops, flipped = transforms.window_crops(frames, starts, self.clip_len, self.crop_size, self.num_crops)
        flipped = torch.from_numpy(flipped)
        clips = transforms.to_network_input(crops) if self.normalized else torch.from_numpy(crops).movedim(-1, -3)
        return clips, flipped


class EvalLoader:
    """Iterable over this rank's EvalItems (each assigned video once). keys: the videos
    assigned to this rank; skipped: those that failed (h2s_dist.data.skips.Skip records)."""

    def __init__(self, dataloader: DataLoader, keys: list[str]) -> None:
        self._dataloader, self.keys = dataloader, keys
        self.skipped: list[Skip] = []

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[EvalItem]:
        for entry in self._dataloader:
            self.skipped.extend(entry[-1])
            if entry[0] == "item":
                _, key, label, clips, flipped, _ = entry
                yield EvalItem(key, int(label), clips, flipped)


def eval_loader(
    dataset_uri: str,
    split: int | None,
    subset: Literal["train", "test"] | None = "test",
    *,
    rank: int,
    world_size: int,
    clip_len_frames: int = 11,
    crop_size: int = 224,
    num_windows: int = 25,
    num_crops: int = 10,
    num_workers: int = 0,
    cache_dir: ShardCache | str | None = None,
    normalized: bool = True,
    stream_cls: type[EvalStream] = EvalStream,
    max_videos: int | None = None,
) -> EvalLoader:
    """Every selected video exactly once across ranks and workers, each shard read by one
    rank x worker slot where there are enough shards (see `eval_assignment`),
    as EvalItem with num_windows windows (transforms.eval_window_starts) x num_crops crops
    (10: ten_crops; 5: unflipped positions; 1: centre). No resampling, no shuffling.
    stream_cls: what a video becomes (EvalStream: frames; flow_shards.FlowEvalStream: flows).
    max_videos: at most this many, evenly spaced over the selection (which runs class by class), so
    that a few videos still cover the classes: a calibration set (inference.quantise_convolutions).

    Memory: a paper-sized item is 250 x 11 x 3 x 224 x 224 float32 = 1.6 GB; pass
    normalized=False for uint8 clips (4x smaller) and normalise per chunk with
    h2s_dist.frames.normalize.
    """
    check_rank(rank, world_size)
    if num_crops not in (1, 5, 10):
        raise ValueError(f"num_crops must be 1, 5 or 10, got {num_crops}")
    min_len = stream_cls.min_clip_len_frames
    if num_workers < 0 or num_windows < 1 or clip_len_frames < min_len:
        raise ValueError(f"need num_workers >= 0, num_windows >= 1 and clip_len_frames >= {min_len}")
    videos = selected_videos(dataset_uri, split, subset)
    if max_videos is not None and len(videos) > max_videos:
        videos = [videos[i * len(videos) // max_videos] for i in range(max_videos)]
    too_small = [v.key for v in videos if v.min_side < crop_size]
    if too_small:
        raise ValueError(
            f"crop_size {crop_size} exceeds the {stream_cls.content}s of {len(too_small)} videos (e.g. {too_small[0]}); "
            "lower crop_size or ingest at a larger size"
        )
    dataset = stream_cls(videos, rank, world_size, clip_len_frames, crop_size, num_windows, num_crops,
                         cache_dir, normalized)
    dataloader = DataLoader(dataset, batch_size=None, num_workers=num_workers,
                            prefetch_factor=1 if num_workers else None)
    keys = eval_assignment([v.key for v in videos], [v.shard for v in videos], rank=rank, world_size=world_size,
                           worker=0, num_workers=1)
    return EvalLoader(dataloader, keys)
