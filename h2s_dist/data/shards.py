"""The training clip stream of an ingested dataset's WebDataset shards.

    stream = train_loader(TrainStreamConfig(uri, batch_size=8, epoch_length_samples=512),
                          rank=0, world_size=1, position=None)
    clips, labels = next(stream)        # (B, T, 3, H, W) uint8, (B,) int64; endless
    x = stream.to_network_input(clips.to(device, non_blocking=True))   # float, normalised there
    checkpoint["data"] = stream.checkpoint()     # resume: train_loader(..., position=that)
    stream.skipped                      # every sample skipped so far (h2s_dist.data.skips.Skip)

A generator stage run inside torch DataLoader workers: open shard (h2s_dist.data.shard_io,
optionally via a bounded local cache) -> tar members (webdataset's tar_file_expander /
group_by_keys) -> keep the manifest-selected keys -> shuffle buffer -> decode window
(h2s_dist.data.codec) -> crops (h2s_dist.data.transforms), `views_per_decode` of them per
sample read -> batch, uint8 (4x fewer bytes than float32 between processes and to the
device; the Task normalises on the device). One DataLoader serves every epoch; only a
checkpoint restarts it (see TrainLoader.checkpoint). Splitting by rank and
by DataLoader worker is explicit (see `train_loader`). Corrupt samples are skipped with a
warning and listed in the stream's `skipped` (workers send their lists along with the data).
The flow reader (h2s_dist.data.flow_shards) is `train_loader(..., stream_cls=FlowTrainStream)`.

The test-time reader lives in h2s_dist.data.eval_stream and is re-exported here, as are the
shard helpers of h2s_dist.data.shard_io, so `from h2s_dist.data.shards import eval_loader`
keeps working.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from h2s_dist import frames as frame_conv
from h2s_dist.data import transforms
from h2s_dist.data.eval_stream import (
    EvalItem,
    EvalLoader,
    EvalStream,
    eval_assignment,
    eval_loader,
)
from h2s_dist.data.shard_io import (
    MAX_CONSECUTIVE_FAILURES,
    ShardCache,
    Video,
    cached_shard_path,
    check_rank,
    iter_samples,
    open_shard,
    read_frame_window,
    selected_videos,
    worker_slot,
)
from h2s_dist.data.skips import Skip, SkipRecorder

__all__ = [
    "MAX_CONSECUTIVE_FAILURES", "EvalItem", "EvalLoader", "EvalStream", "ShardCache", "SkipRecorder", "StreamPosition",
    "TrainLoader", "TrainStream", "TrainStreamConfig", "cached_shard_path", "eval_assignment", "eval_loader", "open_shard",
    "shards_for_worker", "stream_videos", "train_loader",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrainStreamConfig:
    """The training clip stream of one rank."""

    dataset_uri: str
    """Ingested dataset (plain path, file:// or s3://) with manifest.parquet and shards/."""
    batch_size: int
    """Clips per batch on this rank."""
    split: int | None = 1
    """Split 1..3 of the manifest; None = every video (unlabeled pretraining)."""
    subset: Literal["train", "test"] | None = "train"
    """Subset of `split`; None = train and test of the split (or everything if split is None)."""
    clip_len_frames: int = 11
    """Consecutive frames per clip (the paper's 11: 10 flows)."""
    crop_size: int = 224
    """Side of the square training crop after the multi-scale corner crop."""
    scales: tuple[float, ...] = transforms.PAPER_SCALES
    """Crop side = scale * min(H, W), scale drawn from these."""
    max_distort: int = 0
    """0: square crops; d: width and height drawn from scales at most d apart (transforms.multiscale_crop_box)."""
    flip: bool = True
    """Random horizontal flip with probability 1/2."""
    num_workers: int = 0
    """torch DataLoader worker processes (0 = decode in the calling process)."""
    shuffle_buffer: int = 64
    """Samples held for shuffling (raw bytes, before decoding)."""
    epoch_length_samples: int = 1024
    """Clips per epoch on this rank; rounded down to whole batches."""
    seed: int = 0
    """Base seed; every (epoch, rank, worker, resume point) draws from its own stream."""
    labeled: bool = True
    """False: labels are -1 and unlabeled videos (label -1) are allowed (MotionNet pretraining)."""
    cache_dir: str | None = None
    """Local folder where remote shards are downloaded once and read from afterwards."""
    cache_max_bytes: int | None = None
    """Bound of `cache_dir`: least recently used shards are deleted beyond it (None = unbounded)."""
    views_per_decode: int = 1
    """Clips (each its own random window, crop and flip) made from one sample read."""
    pin_memory: bool = False
    """Hand batches out in pinned (page-locked) memory, for asynchronous copies to a CUDA device."""
    prefetch_batches: int = 2
    """Batches each DataLoader worker prepares ahead (its prefetch_factor)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "clip_len_frames", "crop_size", "shuffle_buffer", "epoch_length_samples",
                     "views_per_decode", "prefetch_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainStreamConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"TrainStreamConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.epoch_length_samples < self.batch_size:
            raise ValueError(
                f"epoch_length_samples ({self.epoch_length_samples}) is smaller than one batch "
                f"({self.batch_size}): raise it"
            )
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales}")

    @property
    def cache(self) -> ShardCache | None:
        return None if self.cache_dir is None else ShardCache(self.cache_dir, self.cache_max_bytes)

    @property
    def batches_per_epoch(self) -> int:
        return self.epoch_length_samples // self.batch_size


@dataclass(frozen=True)
class StreamPosition:
    """Where a rank's training stream stands: `samples` clips of epoch `epoch` handed out.

    The stream after a position is a pure function of it (with the same config, rank,
    world_size and num_workers): the rest of the epoch is drawn from random streams seeded
    by (seed, epoch, samples, rank, worker), then epoch after epoch from (seed, epoch, 0,
    rank, worker). `TrainLoader.checkpoint()` restarts its stream at its position, so a
    stream resumed from a checkpointed position yields exactly what the checkpointed one
    yields next. `seed` here is used, not config.seed (they agree unless the config
    changed between runs).
    """

    epoch: int = 0
    samples: int = 0
    """Clips of `epoch` handed out: a whole number of batches, less than one epoch."""
    seed: int = 0


# ----------------------------------------------------------------------------- training


def _shuffled(samples: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffer shuffle: fill `size`, then each arriving sample replaces a random one that is yielded."""
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)  # type: ignore[arg-type]
    yield from buffer


def shards_for_worker(
    shards: Sequence[str], *, seed: int, epoch: int, global_worker: int, num_global_workers: int
) -> list[str]:
    """This worker's shards for `epoch`: a permutation of all shards, the same on every
    rank (seeded by (seed, epoch)), dealt round-robin to the rank x worker slots.

    With fewer shards than slots every slot gets all shards (the slots then differ only by
    their random streams, and may see the same videos in one epoch).
    """
    order = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(len(shards))
    if len(shards) < num_global_workers:
        return [shards[i] for i in order]
    return [shards[i] for i in order[global_worker::num_global_workers]]


def _resampled(shards: Sequence[str], rng: np.random.Generator, count: list[int]) -> Iterator[str]:
    """Shards drawn with replacement, forever. `count[0]` is the number of samples read so
    far (see `_counted`): many shards in a row without a sample (missing, unreadable or
    holding none of the selected keys) stop the stream instead of spinning forever."""
    empty, limit = 0, max(10, 2 * len(shards))
    while True:
        before = count[0]
        yield shards[int(rng.integers(len(shards)))]
        # resumed when the next shard is needed, i.e. the previous one has been read
        empty = empty + 1 if count[0] == before else 0
        if empty >= limit:
            raise RuntimeError(f"{empty} shards in a row gave no sample (of {list(shards)[:3]}...): see the warnings")


def _counted(samples: Iterable[dict], count: list[int]) -> Iterator[dict]:
    for sample in samples:
        count[0] += 1
        yield sample


class TrainStream(IterableDataset):
    """One rank's endless stream from `position`; each DataLoader worker yields its share of
    the batches as (clips, labels, keys, newly skipped), epoch after epoch, forever.

    The batches after `position` are numbered g = 0, 1, 2, ...; worker w of W makes those
    with g % W == w, which is the order in which the DataLoader takes batches from its
    workers (round robin), so the stream is the same sequence whatever the epoch boundaries.
    Each worker reads every epoch from a fresh shard assignment and random stream (seeded by
    (seed, epoch, samples at the start, rank, worker)).

    Subclasses change what a sample becomes by overriding `make_clip` (and the class
    attributes `content`, `min_clip_len_frames` that train_loader checks against, and
    `to_network_input`, which the training Task applies to a batch on the device).
    """

    content: ClassVar[str] = "frame"
    """What the dataset stores (frame or flow), for messages."""
    min_clip_len_frames: ClassVar[int] = 1
    """Smallest clip_len_frames that gives a clip."""
    to_network_input: ClassVar[Callable[[torch.Tensor], torch.Tensor]] = staticmethod(frame_conv.normalize)
    """uint8 clips (B, T, 3, H, W), on any device -> the network's float input."""

    def __init__(self, config: TrainStreamConfig, videos: list[Video], rank: int, world_size: int,
                 position: StreamPosition) -> None:
        self.config, self.rank, self.world_size, self.position = config, rank, world_size, position
        self.videos = {v.key: v for v in videos}
        self.shards = sorted({v.shard for v in videos})

    def __iter__(self) -> Iterator[tuple]:
        cfg, position = self.config, self.position
        worker, num_workers = worker_slot()
        first_batch = position.samples // cfg.batch_size  # in its epoch
        done = 0  # batches of the whole stream (all workers) before this epoch's
        for epoch in itertools.count(position.epoch):
            batches_before = first_batch if epoch == position.epoch else 0
            in_epoch = cfg.batches_per_epoch - batches_before
            mine = _count_congruent(done + in_epoch, worker, num_workers) - _count_congruent(done, worker, num_workers)
            done += in_epoch
            if mine:
                start = StreamPosition(epoch, batches_before * cfg.batch_size, position.seed)
                yield from self._epoch_batches(start, mine, worker, num_workers)

    def _epoch_batches(self, start: StreamPosition, num_batches: int, worker: int, num_workers: int) -> Iterator[tuple]:
        """`num_batches` batches of this worker in epoch `start.epoch`, from `start.samples`."""
        cfg = self.config
        shards = shards_for_worker(
            self.shards, seed=start.seed, epoch=start.epoch,
            global_worker=self.rank * num_workers + worker, num_global_workers=self.world_size * num_workers,
        )
        rng = np.random.default_rng([start.seed, start.epoch, start.samples, self.rank, worker])
        recorder, count = SkipRecorder(), [0]
        samples = iter_samples(_resampled(shards, rng, count), set(self.videos), recorder, cfg.cache)
        clips = self.sample_clips(_shuffled(_counted(samples, count), cfg.shuffle_buffer, rng), rng, recorder)
        if cfg.views_per_decode > 1:  # spread the views of one sample over batches
            clips = _shuffled(clips, cfg.views_per_decode * cfg.batch_size, rng)
        for _ in range(num_batches):
            batch = [next(clips) for _ in range(cfg.batch_size)]
            yield (
                torch.stack([b[0] for b in batch]),
                torch.tensor([b[1] for b in batch], dtype=torch.int64),
                [b[2] for b in batch],
                recorder.drain(),
            )

    def shard_clips(self, shard_uri: str, rng: np.random.Generator,
                    recorder: SkipRecorder) -> Iterator[tuple[torch.Tensor, int, str]]:
        """Every selected sample of one shard, in tar order -> (clip, label, key), as
        `sample_clips` makes them: the unit of work of the Ray Data feed (data/ray_feed.py),
        which calls it in its decode tasks instead of a copy of the decode."""
        samples = iter_samples([shard_uri], set(self.videos), recorder, self.config.cache)
        return self.sample_clips(samples, rng, recorder)

    def sample_clips(self, samples: Iterable[dict], rng: np.random.Generator,
                     recorder: SkipRecorder) -> Iterator[tuple[torch.Tensor, int, str]]:
        """Samples -> (clip, label, key), `views_per_decode` clips per sample read (`make_clip`);
        a sample that fails to decode is recorded in `recorder` and skipped. The one
        per-sample decode of both feeds: this stream's DataLoader workers and the Ray Data
        decode tasks (through `shard_clips`)."""
        cfg, failures = self.config, 0
        for sample in samples:
            video = self.videos[sample["__key__"]]
            try:
                views = [self.make_clip(sample, video, rng) for _ in range(cfg.views_per_decode)]
            except Exception as exn:  # a corrupt sample costs one warning, not the run
                recorder.record(video.key, sample.get("__url__"), exn)
                failures += 1
                if failures > MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(
                        f"{failures} consecutive {self.content} samples failed to decode; last: {recorder.skipped[-1]}"
                    ) from exn
                continue
            failures = 0
            for clip in views:
                yield clip, (video.label if cfg.labeled else -1), video.key

    def make_clip(self, sample: dict, video: Video, rng: np.random.Generator) -> torch.Tensor:
        """One view of a sample -> (T, 3, crop, crop) uint8: a random window of
        clip_len_frames, a multi-scale corner crop, a random flip (normalised later, on the
        device, by `to_network_input`)."""
        cfg = self.config
        start = transforms.random_window_start(video.num_frames, cfg.clip_len_frames, rng)
        frames = read_frame_window(sample, start, cfg.clip_len_frames, video.num_frames)
        frames = transforms.multiscale_corner_crop(frames, cfg.crop_size, rng, cfg.scales, cfg.max_distort)
        if cfg.flip:
            frames = transforms.random_flip(frames, rng)
        return transforms.channels_first(frames)


def _count_congruent(stop: int, residue: int, modulus: int) -> int:
    """How many g in [0, stop) have g % modulus == residue."""
    return max(0, (stop - residue + modulus - 1) // modulus)


class TrainLoader:
    """One rank's endless training stream: (clips uint8, labels) batches, epoch after epoch.

    position: the StreamPosition after the batches handed out so far. skipped: every sample
    skipped so far (Skip records, sent by the workers with the batches). last_keys: the
    video keys of the latest batch. to_network_input: what turns a batch's clips (moved to
    the device) into the network's input. One torch DataLoader serves every epoch; it is
    built when the first batch is asked for and rebuilt only by `checkpoint()`.
    """

    def __init__(self, config: TrainStreamConfig, videos: list[Video], rank: int, world_size: int,
                 position: StreamPosition, stream_cls: type[TrainStream]) -> None:
        self.config, self._videos, self._rank, self._world_size = config, videos, rank, world_size
        self._stream_cls = stream_cls
        self.to_network_input = stream_cls.to_network_input
        self.position = position
        self.skipped: list[Skip] = []
        self.last_keys: list[str] = []
        self.num_dataloaders = 0
        """DataLoaders built so far: one, plus one per checkpoint() after a batch."""
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:
            self._batches = self._from_position()
        return next(self._batches)

    def checkpoint(self) -> StreamPosition:
        """The position to save in a checkpoint. The stream restarts there too: the shuffle
        buffers and batches its workers had read ahead are dropped, so that it yields from
        now on exactly what a stream resumed from this position (`train_loader(...,
        position=)`) yields, and an interrupted run sees the batches of an uninterrupted one.
        Costs a refill of the shuffle buffers (and new worker processes) per checkpoint;
        skips found in the dropped read-ahead are not listed (no batch of theirs was used)."""
        self.close()
        return self.position

    def close(self) -> None:
        """End the DataLoader (and its worker processes); a later batch starts a new one."""
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    def _from_position(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.config
        dataset = self._stream_cls(cfg, self._videos, self._rank, self._world_size, self.position)
        self.num_dataloaders += 1
        dataloader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
                                prefetch_factor=cfg.prefetch_batches if cfg.num_workers else None)
        for clips, labels, keys, skipped in dataloader:
            self.skipped.extend(skipped)
            self.last_keys = list(keys)
            self.position = _advanced(self.position, cfg)
            yield clips, labels


def _advanced(position: StreamPosition, config: TrainStreamConfig) -> StreamPosition:
    """The position one batch later (the next epoch's start after an epoch's last batch)."""
    samples = position.samples + config.batch_size
    if samples >= config.batches_per_epoch * config.batch_size:
        return StreamPosition(epoch=position.epoch + 1, samples=0, seed=position.seed)
    return dataclasses.replace(position, samples=samples)


def train_loader(config: TrainStreamConfig, *, rank: int, world_size: int, position: StreamPosition | None = None,
                 stream_cls: type[TrainStream] = TrainStream) -> TrainLoader:
    """Rank `rank`'s endless training stream, from `position` (default: the start of epoch 0
    with config.seed); see StreamPosition for what a resume yields.

    Resampled shards: every DataLoader worker of every rank draws shards at random, with
    replacement, from its own slice of a per-epoch shard permutation (`shards_for_worker`),
    so ranks see different videos whenever there are at least world_size * num_workers
    shards; then a shuffle buffer, and per sample read `views_per_decode` clips, each a
    random window of clip_len_frames, a multi-scale corner crop and a random flip (a second
    shuffle buffer of views_per_decode x batch_size clips spreads one sample's views over
    batches). Only manifest-selected videos are read, and only shards holding them are
    opened. Batches: (B, T, 3, crop, crop) uint8, (B,) int64; `TrainLoader.to_network_input`
    normalises them (on the device).
    An epoch is config.batches_per_epoch batches per rank. stream_cls: what a sample becomes
    (TrainStream: frames; flow_shards.FlowTrainStream: flows).
    """
    check_rank(rank, world_size)
    position = position or StreamPosition(seed=config.seed)
    per_epoch = config.batches_per_epoch * config.batch_size
    if position.samples % config.batch_size or not 0 <= position.samples < per_epoch:
        raise ValueError(
            f"StreamPosition.samples={position.samples} is not a whole number of batches of "
            f"{config.batch_size} within the epoch of {per_epoch} clips: was batch_size changed?"
        )
    videos = stream_videos(config, stream_cls)
    num_shards, slots = len({v.shard for v in videos}), world_size * max(config.num_workers, 1)
    if num_shards < slots:
        log.warning(
            "%d %s shards for %d rank x worker slots: every slot samples all shards, ranks may see the "
            "same videos within an epoch; ingest with smaller shards for disjoint rank streams",
            num_shards, stream_cls.content, slots,
        )
    return TrainLoader(config, videos, rank, world_size, position, stream_cls)


def stream_videos(config: TrainStreamConfig, stream_cls: type[TrainStream] = TrainStream) -> list[Video]:
    """The videos a `stream_cls` stream of `config` reads (manifest rows of its split and
    subset), after the checks every feed makes: clips long enough for the stream class,
    labels present when the stream is labeled."""
    if config.clip_len_frames < stream_cls.min_clip_len_frames:
        raise ValueError(
            f"a {stream_cls.content} clip needs clip_len_frames >= {stream_cls.min_clip_len_frames}, "
            f"got {config.clip_len_frames}"
        )
    videos = selected_videos(config.dataset_uri, config.split, config.subset)
    if config.labeled and any(v.label < 0 for v in videos):
        raise ValueError(
            f"{config.dataset_uri}: the selection holds unlabeled videos (label -1); pick a split/subset "
            "with labels or set labeled=False"
        )
    return videos
