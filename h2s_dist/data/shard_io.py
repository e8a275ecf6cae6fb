"""Shard access shared by every reader: open a shard, list the selected videos, pull their
samples out of the tar stream, record what had to be skipped (h2s_dist.data.skips).

    videos = selected_videos(dataset_uri, split=1, subset="train")   # manifest rows -> Video
    recorder = SkipRecorder()
    for sample in iter_samples(shard_uris, {v.key for v in videos}, recorder, cache=None):
        frames = read_frame_window(sample, start, 11, num_frames)     # (11, H, W, 3) uint8

Used by the frame readers (h2s_dist.data.shards, h2s_dist.data.eval_stream), the flow
readers (h2s_dist.data.flow_shards) and the tvl1_flows stage. Shard URIs are resolved
against the dataset URI (manifest.shard_uri), so a dataset copied elsewhere (rclone to S3,
another mount point) reads from where it now lives.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from h2s_dist.data import codec, manifest, storage, transforms
from h2s_dist.data.skips import SkipRecorder

# A worker that keeps failing (every sample corrupt, or its shards hold none of the
# selected keys) would otherwise loop forever on a resampled stream.
MAX_CONSECUTIVE_FAILURES = 200

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- shard files


@dataclass(frozen=True)
class ShardCache:
    """A local folder where remote shards are downloaded once and read from afterwards.

    max_bytes bounds the shards kept: after each download the least recently used ones
    (by last use, recorded in their mtime) are deleted until the rest fit. The newest
    download is always kept, so the folder may hold one shard (per concurrent downloader)
    beyond the bound. A reader with a deleted shard still open reads on (POSIX unlink).
    """

    dir: str
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"cache max_bytes must be >= 1 or None, got {self.max_bytes}")


def as_cache(cache: ShardCache | str | None) -> ShardCache | None:
    """A ShardCache from a ShardCache, an unbounded folder path, or None."""
    return ShardCache(cache) if isinstance(cache, str) else cache


def cached_shard_path(uri: str, cache: ShardCache | str) -> str:
    """Local copy of shard `uri` in the cache, downloaded on first use; marks it used.

    The file name is <sha1(uri)[:16]>-<basename>, so shards of different datasets never
    collide. The download goes to a temporary file renamed into place (atomic), under an
    exclusive lock file so that concurrent workers and ranks on one host download once.
    """
    cache = as_cache(cache)
    os.makedirs(cache.dir, exist_ok=True)
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    path = os.path.join(cache.dir, f"{digest}-{posixpath.basename(uri)}")
    if _touch(path):
        return path
    with open(path + _LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _touch(path):  # another process may have finished while we waited
            return path
        fd, tmp = tempfile.mkstemp(dir=cache.dir, prefix=_PARTIAL)
        try:
            with os.fdopen(fd, "wb") as out, storage.open_uri(uri, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    if cache.max_bytes is not None:
        evict_least_recently_used(cache.dir, cache.max_bytes, keep=path)
    return path


_LOCK, _PARTIAL = ".lock", ".partial-"


def _touch(path: str) -> bool:
    """Mark a cached shard used now (its mtime orders eviction); False if it is not there."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def evict_least_recently_used(cache_dir: str, max_bytes: int, keep: str) -> list[str]:
    """Delete the least recently used shards of `cache_dir` (oldest mtime first, never `keep`)
    until the shards left hold at most `max_bytes`; returns the deleted paths."""
    with open(os.path.join(cache_dir, ".evict" + _LOCK), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one eviction at a time on this host
        entries = []
        for entry in os.scandir(cache_dir):
            if entry.name.startswith(".") or entry.name.endswith(_LOCK) or not entry.is_file():
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, entry.path, stat.st_size))
        total, deleted = sum(size for _, _, size in entries), []
        for _, path, size in sorted(entries):
            if total <= max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                deleted.append(path)
            total -= size
    return deleted


def open_shard(uri: str, cache: ShardCache | str | None = None):
    """A binary file object on shard `uri`: local files directly, remote ones through the
    cache when one is given, else streamed by h2s_dist.data.storage. A cache that cannot take
    the shard (a full disk) streams it instead, with a warning: a full disk slows training
    down, it does not end it."""
    local = storage.local_path_or_none(uri)
    if local is not None:
        return open(local, "rb")
    cache = as_cache(cache)
    if cache is not None:
        for _ in range(3):  # another process may evict it between the download and the open
            try:
                return open(cached_shard_path(uri, cache), "rb")
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                log.warning("shard cache %s is full (%s): streaming %s instead; lower cache_max_bytes",
                            cache.dir, err, uri)
                break
    return storage.open_uri(uri, "rb")


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Video:
    """One manifest row as the readers need it."""

    key: str
    label: int
    num_frames: int
    shard: str
    min_side: int  # min(height, width) of the stored frames (of the flow fields in a flow dataset)


def selected_videos(dataset_uri: str, split: int | None, subset: str | None) -> list[Video]:
    """Manifest rows of the split/subset, in manifest order, shard URIs under dataset_uri."""
    table = manifest.select(manifest.read_manifest(dataset_uri), split, subset)
    rows = table.select(["key", "label", "num_frames", "shard", "height", "width"]).to_pylist()
    videos = []
    for r in rows:
        shard = manifest.shard_uri(dataset_uri, r["shard"])
        size = min(int(r["height"]), int(r["width"]))
        videos.append(Video(r["key"], int(r["label"]), int(r["num_frames"]), shard, size))
    if not videos:
        raise ValueError(f"{dataset_uri}: no video in split={split} subset={subset!r}; check the manifest")
    return videos


def check_rank(rank: int, world_size: int) -> None:
    """ValueError unless 0 <= rank < world_size."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker; (0, 1) outside one."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


# ----------------------------------------------------------------------------- samples


def iter_samples(
    shard_uris: Iterable[str], keys: set[str], recorder: SkipRecorder, cache: ShardCache | str | None
) -> Iterator[dict]:
    """Shard URIs -> webdataset samples (raw bytes) whose key is in `keys`; remote shards
    through `cache` (a ShardCache, a folder, or None to stream them).

    Members of other keys are skipped inside the tar stream without being read into memory.
    A missing or unreadable shard is one record in `recorder` (key None), not an exception.
    """

    def opened() -> Iterator[dict]:
        for uri in shard_uris:
            try:
                stream = open_shard(uri, cache)
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


def read_frame_window(sample: dict, start: int, length: int, num_frames: int) -> np.ndarray:
    """Frames [start, start + length) clamped to the video, padded by repeating the last one
    -> (length, H, W, 3) uint8."""
    available = max(1, min(length, num_frames - start))
    return transforms.pad_to_length(codec.decode_frames(sample, start, available), length)
