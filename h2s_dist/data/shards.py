"""Clip streams from the WebDataset shards of an ingested dataset, for training and testing.

    loader = train_loader(TrainStreamConfig(uri, batch_size=8, epoch_length_samples=512),
                          rank=0, world_size=1, state=None)
    for clips, labels in loader:        # (B, T, 3, H, W) float32 normalised, (B,) int64
        ...; checkpoint["data"] = loader.state   # resume: train_loader(..., state=that)

    for item in eval_loader(uri, split=1, rank=0, world_size=1):
        item.clips                      # (num_windows * num_crops, T, 3, H, W), window-major
        item.flipped                    # (num_windows * num_crops,) bool: negate u of a TV-L1 flow

Both are generator stages run inside torch DataLoader workers: open shard (through
h2s_dist.data.storage, optionally via a local cache) -> tar members (webdataset's
tar_file_expander / group_by_keys) -> keep the manifest-selected keys -> [train: shuffle
buffer] -> decode window (h2s_dist.data.codec) -> crops (h2s_dist.data.transforms) ->
[train: batch]. Splitting by rank and by DataLoader worker is explicit (see
`train_loader` and `eval_loader`). Corrupt samples are skipped with a warning and listed
in the loader's `skipped` (workers send their lists along with the data).

Shard URIs are resolved as <dataset_uri>/shards/<basename of the manifest's shard>, so a
dataset copied elsewhere (rclone to S3) reads from where it now lives.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from h2s_dist.data import codec, manifest, storage, transforms

log = logging.getLogger(__name__)

# A worker that keeps failing (every sample corrupt, or its shards hold none of the
# selected keys) would otherwise loop forever on a resampled stream.
MAX_CONSECUTIVE_FAILURES = 200


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

    def __post_init__(self) -> None:
        for name in ("batch_size", "clip_len_frames", "crop_size", "shuffle_buffer", "epoch_length_samples"):
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
    def batches_per_epoch(self) -> int:
        return self.epoch_length_samples // self.batch_size


@dataclass(frozen=True)
class LoaderState:
    """Where a rank's training stream stands: `samples_seen` clips of epoch `epoch` handed out.

    Guarantee on resume: `train_loader(config, state=s)` yields exactly the remaining
    batches_per_epoch - samples_seen / batch_size batches of that epoch, drawn from a
    random stream seeded by (seed, epoch, samples_seen, rank, worker): the same state
    (with the same config, world_size and num_workers) gives the same batches every time,
    but not the batches the interrupted run would have produced next (no exact replay;
    shuffle buffers are not saved). `seed` here is used, not config.seed (they agree
    unless the config changed between runs).
    """

    samples_seen: int = 0
    seed: int = 0
    epoch: int = 0


@dataclass
class EvalItem:
    """All test inputs of one video. clips: (num_windows * num_crops, T, 3, H, W), index
    window * num_crops + crop, crops in transforms.ten_crops order; flipped: (N,) bool."""

    key: str
    label: int
    clips: torch.Tensor
    flipped: torch.Tensor


# ----------------------------------------------------------------------------- shard files


def cached_shard_path(uri: str, cache_dir: str) -> str:
    """Local copy of shard `uri` in `cache_dir`, downloaded on first use.

    The file name is <sha1(uri)[:16]>-<basename>, so shards of different datasets never
    collide. The download goes to a temporary file renamed into place (atomic), under an
    exclusive lock file so that concurrent workers and ranks on one host download once.
    """
    os.makedirs(cache_dir, exist_ok=True)
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{digest}-{posixpath.basename(uri)}")
    if os.path.exists(path):
        return path
    with open(path + ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):  # another process may have finished while we waited
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".partial-")
            try:
                with os.fdopen(fd, "wb") as out, storage.open_uri(uri, "rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
    return path


def open_shard(uri: str, cache_dir: str | None = None):
    """A binary file object on shard `uri`: local files directly, remote ones through the
    cache when `cache_dir` is set, else streamed by h2s_dist.data.storage."""
    local = storage.local_path_or_none(uri)
    if local is not None:
        return open(local, "rb")
    if cache_dir is not None:
        return open(cached_shard_path(uri, cache_dir), "rb")
    return storage.open_uri(uri, "rb")


# ----------------------------------------------------------------------------- helpers


class SkipRecorder:
    """A webdataset `handler=`: warn, remember, keep going. `drain()` hands the new records
    to whoever forwards them out of a DataLoader worker."""

    def __init__(self) -> None:
        self.skipped: list[dict[str, Any]] = []
        self._sent = 0

    def __call__(self, exn: BaseException) -> bool:
        url = next((a for a in getattr(exn, "args", ())[1:] if isinstance(a, str)), None)
        self.record(None, url, exn)
        return True

    def record(self, key: str | None, url: str | None, exn: BaseException | str) -> None:
        error = exn if isinstance(exn, str) else f"{type(exn).__name__}: {str(exn)[:300]}"
        self.skipped.append({"key": key, "url": url, "error": error})
        log.warning("skipping sample %s in %s: %s", key, url, error)

    def drain(self) -> list[dict[str, Any]]:
        new = self.skipped[self._sent :]
        self._sent = len(self.skipped)
        return new


@dataclass(frozen=True)
class _Video:
    key: str
    label: int
    num_frames: int
    shard: str
    min_side: int  # min(height, width) of the stored frames


def _selected_videos(dataset_uri: str, split: int | None, subset: str | None) -> list[_Video]:
    """Manifest rows of the split/subset, in manifest order, shard URIs under dataset_uri."""
    table = manifest.select(manifest.read_manifest(dataset_uri), split, subset)
    rows = table.select(["key", "label", "num_frames", "shard", "height", "width"]).to_pylist()
    videos = []
    for r in rows:
        shard = storage.join(dataset_uri, "shards", posixpath.basename(r["shard"]))
        size = min(int(r["height"]), int(r["width"]))
        videos.append(_Video(r["key"], int(r["label"]), int(r["num_frames"]), shard, size))
    if not videos:
        raise ValueError(f"{dataset_uri}: no video in split={split} subset={subset!r}; check the manifest")
    return videos


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _samples(
    shard_uris: Iterable[str], keys: set[str], recorder: SkipRecorder, cache_dir: str | None
) -> Iterator[dict]:
    """Shard URIs -> webdataset samples (raw bytes) whose key is in `keys`.

    Members of other keys are skipped inside the tar stream without being read into memory.
    """

    def opened() -> Iterator[dict]:
        for uri in shard_uris:
            try:
                stream = open_shard(uri, cache_dir)
            except Exception as exn:  # a missing/unreadable shard is one skip, not a crash
                recorder.record(None, uri, exn)
                continue
            try:
                yield {"url": uri, "stream": stream}
            finally:
                stream.close()

    def wanted(fname: str) -> bool:
        return fname.split(".", 1)[0] in keys

    files = tar_file_expander(opened(), handler=recorder, select_files=wanted)
    return group_by_keys(files, handler=recorder)


def _read_window(sample: dict, start: int, length: int, num_frames: int) -> np.ndarray:
    """Frames [start, start + length) clamped to the video, padded by repeating the last one."""
    available = max(1, min(length, num_frames - start))
    return transforms.pad_to_length(codec.decode_frames(sample, start, available), length)


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


# ----------------------------------------------------------------------------- training


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


class _TrainStream(IterableDataset):
    """One rank's training stream; each DataLoader worker yields its share of the batches
    as (clips, labels, keys, newly skipped)."""

    def __init__(self, config: TrainStreamConfig, videos: list[_Video], rank: int, world_size: int,
                 state: LoaderState, num_batches: int) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        self.state, self.num_batches = state, num_batches
        self.videos = {v.key: v for v in videos}
        self.shards = sorted({v.shard for v in videos})

    def __iter__(self) -> Iterator[tuple]:
        cfg, state = self.config, self.state
        worker, num_workers = _worker()
        my_batches = self.num_batches // num_workers + (worker < self.num_batches % num_workers)
        if my_batches == 0:
            return
        shards = shards_for_worker(
            self.shards, seed=state.seed, epoch=state.epoch,
            global_worker=self.rank * num_workers + worker, num_global_workers=self.world_size * num_workers,
        )
        rng = np.random.default_rng([state.seed, state.epoch, state.samples_seen, self.rank, worker])
        recorder, count = SkipRecorder(), [0]
        samples = _samples(_resampled(shards, rng, count), set(self.videos), recorder, cfg.cache_dir)
        clips = self._clips(_shuffled(_counted(samples, count), cfg.shuffle_buffer, rng), rng, recorder)
        for _ in range(my_batches):
            batch = [next(clips) for _ in range(cfg.batch_size)]
            yield (
                torch.stack([b[0] for b in batch]),
                torch.tensor([b[1] for b in batch], dtype=torch.int64),
                [b[2] for b in batch],
                recorder.drain(),
            )

    def _clips(self, samples: Iterator[dict], rng: np.random.Generator,
               recorder: SkipRecorder) -> Iterator[tuple[torch.Tensor, int, str]]:
        cfg, failures = self.config, 0
        for sample in samples:
            video = self.videos[sample["__key__"]]
            try:
                start = transforms.random_window_start(video.num_frames, cfg.clip_len_frames, rng)
                frames = _read_window(sample, start, cfg.clip_len_frames, video.num_frames)
                frames = transforms.multiscale_corner_crop(frames, cfg.crop_size, rng, cfg.scales)
                if cfg.flip:
                    frames = transforms.random_flip(frames, rng)
                clip = transforms.to_network_input(frames)
            except Exception as exn:  # a corrupt sample costs one warning, not the run
                recorder.record(video.key, sample.get("__url__"), exn)
                failures += 1
                if failures > MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(
                        f"{failures} consecutive samples failed to decode; last: {recorder.skipped[-1]}"
                    ) from exn
                continue
            failures = 0
            yield clip, (video.label if cfg.labeled else -1), video.key


class TrainLoader:
    """Iterable over one epoch's remaining (clips, labels) batches of one rank.

    state: the LoaderState after the batches handed out so far (checkpoint this); after the
    last batch it is (samples_seen=0, epoch + 1). skipped: samples skipped so far (dicts
    with key, url, error). last_keys: the video keys of the latest batch.
    """

    def __init__(self, dataloader: DataLoader, state: LoaderState, batch_size: int, num_batches: int) -> None:
        self._dataloader, self.state, self._batch_size = dataloader, state, batch_size
        self._num_batches = num_batches
        self.skipped: list[dict[str, Any]] = []
        self.last_keys: list[str] = []

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for clips, labels, keys, skipped in self._dataloader:
            self.skipped.extend(skipped)
            self.last_keys = list(keys)
            self.state = dataclasses.replace(self.state, samples_seen=self.state.samples_seen + self._batch_size)
            yield clips, labels
        self.state = LoaderState(samples_seen=0, seed=self.state.seed, epoch=self.state.epoch + 1)


def train_loader(config: TrainStreamConfig, *, rank: int, world_size: int,
                 state: LoaderState | None = None) -> TrainLoader:
    """The rest of the current epoch of rank `rank`'s training stream (see LoaderState).

    Resampled shards: every DataLoader worker of every rank draws shards at random, with
    replacement, from its own slice of a per-epoch shard permutation (`shards_for_worker`),
    so ranks see different videos whenever there are at least world_size * num_workers
    shards; then a shuffle buffer, a random window of clip_len_frames, a multi-scale corner
    crop, a random flip and normalisation. Only manifest-selected videos are read, and
    only shards holding them are opened. Batches: (B, T, 3, crop, crop) float32, (B,) int64.
    """
    _check_rank(rank, world_size)
    state = state or LoaderState(seed=config.seed)
    if state.samples_seen % config.batch_size or not 0 <= state.samples_seen <= config.epoch_length_samples:
        raise ValueError(
            f"LoaderState.samples_seen={state.samples_seen} is not a whole number of batches of "
            f"{config.batch_size} within the epoch of {config.epoch_length_samples}: was batch_size changed?"
        )
    videos = _selected_videos(config.dataset_uri, config.split, config.subset)
    if config.labeled and any(v.label < 0 for v in videos):
        raise ValueError(
            f"{config.dataset_uri}: the selection holds unlabeled videos (label -1); pick a split/subset "
            "with labels or set labeled=False"
        )
    num_shards, slots = len({v.shard for v in videos}), world_size * max(config.num_workers, 1)
    if num_shards < slots:
        log.warning(
            "%d shards for %d rank x worker slots: every slot samples all shards, ranks may see the "
            "same videos within an epoch; ingest with smaller shards for disjoint rank streams", num_shards, slots,
        )
    num_batches = config.batches_per_epoch - state.samples_seen // config.batch_size
    dataset = _TrainStream(config, videos, rank, world_size, state, num_batches)
    dataloader = DataLoader(dataset, batch_size=None, num_workers=config.num_workers,
                            prefetch_factor=2 if config.num_workers else None)
    return TrainLoader(dataloader, state, config.batch_size, num_batches)


# ----------------------------------------------------------------------------- evaluation


def eval_assignment(keys: Sequence[str], *, rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The videos one DataLoader worker of one rank evaluates.

    Ranks take videos by manifest position (index % world_size); inside a rank, workers take
    contiguous blocks of the rank's list, so a worker touches few shards. Every key lands in
    exactly one (rank, worker) slot, whatever the number of shards.
    """
    mine = list(keys[rank::world_size])
    bounds = np.linspace(0, len(mine), num_workers + 1).round().astype(int)
    return mine[bounds[worker] : bounds[worker + 1]]


class _EvalStream(IterableDataset):
    """Yields ("item", key, label, clips, flipped) per video and ("skip", records) entries."""

    def __init__(self, videos: list[_Video], rank: int, world_size: int, clip_len_frames: int, crop_size: int,
                 num_windows: int, num_crops: int, cache_dir: str | None, normalized: bool) -> None:
        self.videos, self.rank, self.world_size = videos, rank, world_size
        self.clip_len, self.crop_size, self.num_windows, self.num_crops = clip_len_frames, crop_size, num_windows, num_crops
        self.cache_dir, self.normalized = cache_dir, normalized

    def __iter__(self) -> Iterator[tuple]:
        worker, num_workers = _worker()
        by_key = {v.key: v for v in self.videos}
        keys = eval_assignment([v.key for v in self.videos], rank=self.rank, world_size=self.world_size,
                               worker=worker, num_workers=num_workers)
        shards = list(dict.fromkeys(by_key[k].shard for k in keys))  # manifest order, unique
        recorder, pending = SkipRecorder(), set(keys)
        for sample in _samples(shards, pending.copy(), recorder, self.cache_dir):
            key = sample["__key__"]
            if key not in pending:  # a duplicate key in the shards: keep the first copy only
                continue
            pending.discard(key)
            try:
                clips, flipped = self._inputs(sample, by_key[key].num_frames)
            except Exception as exn:
                recorder.record(key, sample.get("__url__"), exn)
                yield ("skip", recorder.drain())
                continue
            yield ("item", key, by_key[key].label, clips, flipped, recorder.drain())
        for key in sorted(pending, key=keys.index):
            recorder.record(key, by_key[key].shard, "sample not found in its shard")
        yield ("skip", recorder.drain())

    def _inputs(self, sample: dict, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = transforms.eval_window_starts(num_frames, self.clip_len, self.num_windows)
        frames = _read_window(sample, 0, starts[-1] + self.clip_len, num_frames)
        per_window = [
            transforms.select_crops(*transforms.ten_crops(frames[s:s + self.clip_len], self.crop_size), self.num_crops)
            for s in starts
        ]
        crops = np.concatenate([c for c, _ in per_window])
        flipped = torch.from_numpy(np.concatenate([f for _, f in per_window]))
        clips = transforms.to_network_input(crops) if self.normalized else torch.from_numpy(crops).movedim(-1, -3)
        return clips, flipped


class EvalLoader:
    """Iterable over this rank's EvalItems (each assigned video once). keys: the videos
    assigned to this rank; skipped: those that failed (dicts with key, url, error)."""

    def __init__(self, dataloader: DataLoader, keys: list[str]) -> None:
        self._dataloader, self.keys = dataloader, keys
        self.skipped: list[dict[str, Any]] = []

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
    cache_dir: str | None = None,
    normalized: bool = True,
) -> EvalLoader:
    """Every selected video exactly once across ranks and workers (see `eval_assignment`),
    as EvalItem with num_windows windows (transforms.eval_window_starts) x num_crops crops
    (10: ten_crops; 5: unflipped positions; 1: centre). No resampling, no shuffling.

    Memory: a paper-sized item is 250 x 11 x 3 x 224 x 224 float32 = 1.6 GB; pass
    normalized=False for uint8 clips (4x smaller) and normalise per chunk with
    h2s_dist.frames.normalize.
    """
    _check_rank(rank, world_size)
    if num_crops not in (1, 5, 10):
        raise ValueError(f"num_crops must be 1, 5 or 10, got {num_crops}")
    if num_workers < 0 or num_windows < 1 or clip_len_frames < 1:
        raise ValueError("need num_workers >= 0, num_windows >= 1 and clip_len_frames >= 1")
    videos = _selected_videos(dataset_uri, split, subset)
    too_small = [v.key for v in videos if v.min_side < crop_size]
    if too_small:
        raise ValueError(
            f"crop_size {crop_size} exceeds the frames of {len(too_small)} videos (e.g. {too_small[0]}); "
            "lower crop_size or ingest at a larger size"
        )
    dataset = _EvalStream(videos, rank, world_size, clip_len_frames, crop_size, num_windows, num_crops,
                          cache_dir, normalized)
    dataloader = DataLoader(dataset, batch_size=None, num_workers=num_workers,
                            prefetch_factor=1 if num_workers else None)
    return EvalLoader(dataloader, [v.key for v in videos][rank::world_size])
