"""One shard of an ingest: the unit of work a Ray task (or this process) does.

    record = encode_shard({"index": 3, "entries": [...], "options": IngestOptions(...),
                           "out": ResumableDataset(...), "crashed": {}})

For each video of the shard, in plan order: read the source through the storage module
(`storage.local_copy`: a local file in place, an s3:// object downloaded once to a temp file,
hashed on the way), decode it frame by frame (`video.open_video`, resized by swscale), cut
the frames into segments of `segment_frames` (`segments`), and turn each segment into a
sample (`encode_segment`, the one call into the codec). Encoded segments wait in a local
spool folder until their video has decoded to the end: a video found truncated at its end is
skipped whole, as before segments. Then the video's samples go into the shard tar (spooled
locally by `storage.atomic_write`, uploaded whole), and once the tar is in place the shard's
done record is written here, in the task, so a finished shard is never redone, even when the
driver dies before it hears of it.

Memory per task is bounded by one segment of decoded frames (about segment_frames frames,
`segments` has the exact bound; 300 frames at 340x256 are 78 MB) and one encoded segment,
whatever the length of the videos (a test video, never cut, is held whole); local disk by
one source video, one video's encoded segments and one shard.

A video longer than `segment_frames` becomes several samples: keys `<key>_f<start frame:06d>`,
each row of the manifest naming its `source_key` and `start_frame`. Consecutive segments
share `segment_overlap_frames` frames, so a training window that straddles a cut still lies
whole inside one segment. A video of one segment keeps its key, and a test video (of any
split) is never cut: evaluation scores each sample as a whole video.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from h2s_dist.data import codec, shard_tar, storage
from h2s_dist.data.ingest_defaults import DEFAULT_SEGMENT_OVERLAP_FRAMES, DEFAULT_SHARD_TARGET_BYTES
from h2s_dist.data.resumable import UnitRecord
from h2s_dist.data.skips import Skip
from h2s_dist.data.sources import VideoEntry

DEFAULT_SIZE = (340, 256)
_DEFAULT_FPS = 25.0  # a file without a rate: the UCF101/HMDB51 rate


@dataclass(frozen=True)
class IngestOptions:
    """Everything besides the entries that decides what the shards hold (part of the plan)."""

    encoding: str = codec.DEFAULT_ENCODING
    """"h264" (H.264, short GOP, frame index; the default), "jpeg" (JPEG frame stack) or "mp4" (H.264 from frame 0)."""
    size: tuple[int, int] | None = DEFAULT_SIZE
    """(width, height) every frame is resized to; None keeps the source size."""
    min_frames: int = 11
    """Videos with fewer frames are skipped (one paper clip is 11 frames)."""
    quality: int | None = None
    """codec quality: JPEG quality or x264 CRF; None = codec.DEFAULT_QUALITY."""
    shard_target_bytes: int = DEFAULT_SHARD_TARGET_BYTES
    """About how many stored bytes per shard (planned from estimates)."""
    segment_frames: int | None = None
    """A longer video becomes several samples of this many frames (the last one takes the
    tail); None keeps every video whole (memory then grows with the longest video). A test
    video is never cut (`segment_frames_of`)."""
    segment_overlap_frames: int = DEFAULT_SEGMENT_OVERLAP_FRAMES
    """Frames consecutive segments share: windows of up to this + 1 frames are never lost at a cut."""


@dataclass(frozen=True)
class Segment:
    """Consecutive frames of one video: its frames [start, start + len(frames))."""

    start: int
    frames: np.ndarray
    """(T, H, W, 3) uint8 RGB."""
    whole: bool
    """True when this segment is the entire video."""


def segments(
    frames: Iterable[np.ndarray], segment_frames: int | None, min_frames: int, overlap_frames: int = 0
) -> Iterator[Segment]:
    """Cut a stream of frames (H, W, 3) into segments of `segment_frames` frames that overlap
    by `overlap_frames`; None: one segment, the whole video.

    Segment k holds frames [k * stride, k * stride + segment_frames), stride = segment_frames
    - overlap_frames: a window of L <= overlap_frames + 1 frames starting at any t <= T - L
    lies whole inside some segment (with L = overlap_frames + 1, inside exactly one), so
    cutting loses no training window. The last segment takes the rest, and is cut off as a
    segment of its own only once it holds at least `min_frames` frames and one frame the
    segment before lacks (else the rest joins that segment). At most max(segment_frames + 1,
    stride + min_frames) frames are held at a time."""
    if segment_frames is not None and not 0 <= overlap_frames < segment_frames:
        raise ValueError(f"need 0 <= overlap_frames < segment_frames, got {overlap_frames}, {segment_frames}")
    held: list[np.ndarray] = []
    start = 0
    if segment_frames is not None:
        stride = segment_frames - overlap_frames
        cut_at = max(segment_frames + 1, stride + min_frames)
    for frame in frames:
        held.append(frame)
        if segment_frames is not None and len(held) >= cut_at:
            yield Segment(start, np.stack(held[:segment_frames]), whole=False)
            start, held = start + stride, held[stride:]
    if held:
        yield Segment(start, np.stack(held), whole=start == 0)


def segment_frames_of(entry: VideoEntry, options: IngestOptions) -> int | None:
    """The segment length of `entry`: a video that is a test video of any split stays whole,
    because evaluation scores each sample as one video (windows spread over all of it,
    transforms.eval_window_starts): a cut test video would count as several."""
    return None if "test" in entry.splits.values() else options.segment_frames


def segment_key(key: str, segment: Segment) -> str:
    """The sample key of `segment` of video `key`: the key itself for a whole video."""
    return key if segment.whole else f"{key}_f{segment.start:06d}"


def encode_segment(frames: np.ndarray, fps: float, options: IngestOptions) -> tuple[str, bytes]:
    """Decoded frames (T, H, W, 3) -> (member extension, payload): the one place ingest calls
    the codec, so a change of shard encoding changes this function only."""
    return codec.encode_frames(frames, fps, options.encoding, options.quality)


# ----------------------------------------------------------------------------- one video


@dataclass
class _Sample:
    """One encoded segment, its payload spooled to `path` until the video is done."""

    key: str
    start: int
    num_frames: int
    ext: str
    path: str
    stored_bytes: int


@dataclass
class EncodedVideo:
    """A video's samples, or why it was skipped (`reason`)."""

    key: str
    reason: str | None = None
    samples: list[_Sample] = field(default_factory=list)
    fps: float = 0.0
    width: int = 0
    height: int = 0
    sha256: str = ""
    source_bytes: int = 0


@contextlib.contextmanager
def _decoded(entry: VideoEntry, options: IngestOptions) -> Iterator[tuple[Iterator[np.ndarray], float, str, int]]:
    """(frames one at a time, fps, sha256 of the source, source bytes) of an entry."""
    from h2s_dist.data.video import open_video, resize_frames

    if entry.generate is not None:  # generated in memory: small by construction
        frames, fps = entry.generate()
        digest = hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
        if options.size is not None:
            frames = resize_frames(frames, options.size)
        yield iter(frames), float(fps), digest, 0
        return
    with storage.local_copy(entry.path) as (path, digest, source_bytes):
        # threads=1: a task holds one CPU; the cluster's parallelism is the tasks.
        with open_video(path, size=options.size, threads=1) as video:
            yield iter(video), video.fps, digest, source_bytes


def encode_video(entry: VideoEntry, options: IngestOptions, spool: str) -> EncodedVideo:
    """Decode, segment and encode one video into files under `spool`. Never raises for bad
    input: returns a reason (the spooled files of a skipped video are removed)."""
    from h2s_dist.data.video import VideoDecodeError

    done = EncodedVideo(entry.key)
    try:
        with _decoded(entry, options) as (frames, fps, digest, source_bytes):
            fps = fps if fps and fps > 0 else _DEFAULT_FPS
            done.fps, done.sha256, done.source_bytes = float(fps), digest, source_bytes
            length, overlap = segment_frames_of(entry, options), options.segment_overlap_frames
            for segment in segments(frames, length, options.min_frames, overlap):
                if len(segment.frames) < options.min_frames:  # only a whole video can be this short
                    done.reason = f"too short: {len(segment.frames)} frames, need {options.min_frames}"
                    break
                done.height, done.width = segment.frames.shape[1:3]
                done.samples.append(_spool(segment, segment_key(entry.key, segment), fps, options, spool))
    except VideoDecodeError as err:
        done.reason = err.reason
    except FileNotFoundError:
        done.reason = "missing: file not found"
    except Exception as err:  # noqa: BLE001 - any other failure on one video is a skip, listed with its cause
        done.reason = f"failed: {type(err).__name__}: {err}"[:300]
    if done.reason is not None:
        for sample in done.samples:
            os.unlink(sample.path)
        done.samples = []
    return done


def _spool(segment: Segment, key: str, fps: float, options: IngestOptions, spool: str) -> _Sample:
    ext, payload = encode_segment(segment.frames, fps, options)
    path = os.path.join(spool, f"{key}.{ext}")
    with open(path, "wb") as fh:
        fh.write(payload)
    return _Sample(key, segment.start, len(segment.frames), ext, path, len(payload))


# ----------------------------------------------------------------------------- one shard


def encode_shard(job: dict[str, Any]) -> UnitRecord:
    """Shard `job["index"]` -> its tar and done record (both written here); returns the record.

    job: {"index", "entries" (VideoEntry, plan order), "options" (IngestOptions), "out"
    (ResumableDataset), "crashed" ({key: reason}: entries found to kill their process,
    skipped without decoding)}."""
    started = time.perf_counter()
    index, entries, options, out = job["index"], job["entries"], job["options"], job["out"]
    crashed: dict[str, str] = job.get("crashed", {})
    shard = out.unit_name(index)
    rows: list[dict[str, Any]] = []
    skipped: list[Skip] = []
    with tempfile.TemporaryDirectory(prefix="h2s-ingest-") as spool, \
            storage.atomic_write(out.unit_uri(index)) as dst, shard_tar.open_writer(dst) as tar:
        for entry in entries:
            if entry.key in crashed:
                skipped.append(Skip(entry.key, entry.path, crashed[entry.key]))
                continue
            video = encode_video(entry, options, spool)
            if video.reason is not None:
                skipped.append(Skip(entry.key, entry.path, video.reason))
                continue
            for sample in video.samples:
                row = _row(entry, video, sample, shard, options)
                _add_sample(tar, sample, row)
                rows.append(row)
    extra = {"shard": shard, "pid": os.getpid(), "host": socket.gethostname(),
             "seconds": round(time.perf_counter() - started, 3)}
    return out.mark_done(index, UnitRecord(rows, skipped, extra))


def probe_entry(job: dict[str, Any]) -> bool:
    """Encode one entry and throw the result away: run alone in a task, it tells whether the
    entry kills its process (the task dies) or not (True)."""
    with tempfile.TemporaryDirectory(prefix="h2s-probe-") as spool:
        encode_video(job["entry"], job["options"], spool)
    return True


def _row(entry: VideoEntry, video: EncodedVideo, sample: _Sample, shard: str, options: IngestOptions) -> dict:
    """The manifest row of one sample (plus source_bytes for the report, on a video's first sample)."""
    return {
        "key": sample.key, "shard": shard, "label": entry.label, "class_name": entry.class_name,
        **{f"split_{n}": entry.split(n) for n in (1, 2, 3)},
        "num_frames": sample.num_frames, "fps": video.fps, "width": video.width, "height": video.height,
        "stored_bytes": sample.stored_bytes, "source": entry.path, "sha256": video.sha256,
        "encoding": options.encoding, "source_key": entry.key, "start_frame": sample.start,
        "source_bytes": video.source_bytes if sample.start == 0 else 0,
    }


_META_FIELDS = ("key", "label", "class_name", "num_frames", "fps", "width", "height", "source", "encoding",
                "source_key", "start_frame")


def _add_sample(tar, sample: _Sample, row: dict[str, Any]) -> None:
    with open(sample.path, "rb") as fh:
        payload = fh.read()
    os.unlink(sample.path)
    shard_tar.add_member(tar, sample.key, sample.ext, payload)
    meta = {name: row[name] for name in _META_FIELDS}
    shard_tar.add_member(tar, sample.key, "json", json.dumps(meta, sort_keys=True).encode())
