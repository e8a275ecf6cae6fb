"""Ingest: video corpora -> WebDataset shards + Parquet manifest at a URI (path or s3://).

    h2s ingest ucf101 /data/UCF-101 --splits /data/ucfTrainTestlist --output s3://bucket/ucf101
    python -m h2s_dist.data.ingest_cli synthetic --output /tmp/synth --num-videos 64

    report = ingest(ucf101_entries(root, splits), "s3://bucket/ucf101", num_workers=8)
    report = ingest(build_listing("synthetic", synthetic={"num_videos": 64}), "/tmp/synth")

The command line lives in h2s_dist.data.ingest_cli.

Steps (docs/data.md has the layout and the encoding numbers):
1. Plan. Entries are sorted by (split-1 group: train, test, neither; key) and packed
   greedily into shards of about `shard_target_bytes`, using an *estimate* of each stored
   video (source file bytes x a measured stored/source ratio), never mixing split-1
   groups in one shard. The plan depends only on the inputs and the options, so a rerun
   makes the same plan; it is saved as URI/_ingest/plan.json with a fingerprint.
2. Encode. Worker processes decode (video.read_video, resized to `size`) and encode
   (codec.encode_frames) each video; the parent writes the samples of one shard as a tar
   through `storage.atomic_write` (a local temp file, renamed or uploaded whole), then writes
   URI/_ingest/shard-NNNNNN.json (its manifest rows and skipped videos) -- the shard's
   "done" record. A bad video (undecodable, truncated, empty, shorter than
   `min_frames`, one that kills its worker process) and an entry whose key cannot name a
   sample are skipped and listed with their reason; no single input stops the ingest.
   Keys of any length go in (shards are PAX tars, h2s_dist.data.shard_tar).
3. Resume. A rerun with the same plan skips every shard that has a done record and a
   tar; it rewrites none of them. A different plan at the same URI is refused.
4. Finish. manifest.parquet (rows of every shard, in shard order), classes.json and
   ingest_report.json are written from the done records.
Plan, done records, resume and finish are h2s_dist.data.resumable's (tvl1_flows uses them too).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from h2s_dist.data import codec, manifest, shard_tar, sources, storage
from h2s_dist.data.ingest_defaults import DEFAULT_SHARD_TARGET_BYTES
from h2s_dist.data.resumable import ResumableDataset, UnitRecord, gather, plan_fingerprint
from h2s_dist.data.skips import Skip, count_kinds
from h2s_dist.data.sources import SourceListing, VideoEntry

DEFAULT_SIZE = (340, 256)
# Stored bytes / source bytes per encoding, from bench/data_feed.py and bench/data.py (docs/data.md); only used
# to plan shard sizes, so being off by 2x makes shards 2x off their target, nothing worse.
_ESTIMATED_RATIO = {"h264": 0.6, "jpeg": 7.0, "mp4": 0.3}
_GENERATED_VIDEO_BYTES = 200_000  # estimate for in-memory videos (no source file to stat)
_PLAN_VERSION = 1
_SPLIT1_GROUP = {"train": 0, "test": 1, "": 2}


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


@dataclass
class IngestReport:
    """What an ingest did; also written as URI/ingest_report.json."""

    output_uri: str
    manifest_uri: str
    source: str
    options: dict[str, Any]
    num_entries: int
    num_ok: int
    num_skipped: int
    skipped: list[Skip]
    """Every video that was not ingested (source: its file), with its reason."""
    missing: list[str]
    """Split-list entries with no file on disk (not counted in num_entries)."""
    num_shards: int
    shards_written: int
    shards_reused: int
    """Shards found complete from an earlier run and left untouched."""
    stored_bytes: int
    source_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # Skip records become {"key", "source", "reason"}

    def summary(self) -> str:
        reasons = count_kinds(self.skipped)
        lines = [
            f"ingested {self.num_ok} of {self.num_entries} videos into {self.num_shards} shards "
            f"({self.shards_written} written, {self.shards_reused} already complete) in {self.seconds:.1f} s",
            f"stored {self.stored_bytes / 1e6:.1f} MB ({self.options['encoding']})"
            + (f" from {self.source_bytes / 1e6:.1f} MB of source files" if self.source_bytes else ""),
        ]
        if self.skipped:
            lines.append(f"skipped {self.num_skipped}: " + ", ".join(f"{n} {r}" for r, n in reasons.most_common()))
            lines += [f"  {s.source}: {s.reason}" for s in self.skipped[:10]]
            if len(self.skipped) > 10:
                lines.append(f"  ... {len(self.skipped) - 10} more in ingest_report.json")
        if self.missing:
            lines.append(f"{len(self.missing)} split-list entries have no file, e.g. {self.missing[0]}")
        lines.append(f"manifest: {self.manifest_uri}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- planning


def split1_group(entry: VideoEntry) -> int:
    """0 = split-1 train, 1 = split-1 test, 2 = neither: the order videos are written in."""
    return _SPLIT1_GROUP[entry.split(1)]


def _mixing_order(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()


def estimate_stored_bytes(entry: VideoEntry, encoding: str) -> int:
    """A planning estimate of the stored size of `entry` (source bytes x measured ratio)."""
    if entry.generate is not None:
        return _GENERATED_VIDEO_BYTES
    try:
        source = os.path.getsize(entry.path)
    except OSError:
        source = 0  # missing or unreadable: it will be skipped, it takes no room
    return int(source * _ESTIMATED_RATIO[encoding])


def plan_shards(entries: Sequence[VideoEntry], options: IngestOptions) -> list[list[VideoEntry]]:
    """Entries -> shards (lists of entries), in writing order. Deterministic in its inputs.

    Sorted by split-1 group, then in a fixed pseudo-random order (a hash of the key): keys
    such as v_ApplyEyeMakeup_g08_c01 sort by class, and class-sorted shards would feed a
    training stream one class at a time, which no shuffle buffer can undo. A shard closes
    when its estimated bytes reach the target or the split-1 group changes, so every shard
    is pure for split 1."""
    ordered = sorted(entries, key=lambda e: (split1_group(e), _mixing_order(e.key), e.key))
    shards: list[list[VideoEntry]] = []
    current: list[VideoEntry] = []
    current_bytes = 0
    for entry in ordered:
        if current and (current_bytes >= options.shard_target_bytes or split1_group(current[-1]) != split1_group(entry)):
            shards.append(current)
            current, current_bytes = [], 0
        current.append(entry)
        current_bytes += estimate_stored_bytes(entry, options.encoding)
    if current:
        shards.append(current)
    return shards


def _plan(shards: list[list[VideoEntry]], options: IngestOptions) -> dict[str, Any]:
    """What decides the shards' bytes, saved in _ingest/plan.json beside its fingerprint."""
    return {
        "version": _PLAN_VERSION,
        "options": asdict(options),
        "shards": [[[e.key, e.path, e.label, e.class_name, sorted(e.splits.items())] for e in s] for s in shards],
    }


# ----------------------------------------------------------------------------- one video (worker side)


@dataclass
class _Encoded:
    """A worker's answer for one entry: an encoded sample, or a skip reason."""

    key: str
    reason: str | None = None
    ext: str = ""
    payload: bytes = b""
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    source_bytes: int = 0


def encode_entry(entry: VideoEntry, options: IngestOptions) -> _Encoded:
    """Decode, resize and encode one video. Never raises for bad input: returns a reason."""
    from h2s_dist.data.video import VideoDecodeError, read_video, resize_frames

    try:
        if entry.generate is not None:
            frames, fps = entry.generate()
            digest = hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
            source_bytes = 0
            if options.size is not None:
                frames = resize_frames(frames, options.size)
        else:
            with open(entry.path, "rb") as fh:
                data = fh.read()
            digest, source_bytes = hashlib.sha256(data).hexdigest(), len(data)
            decoded = read_video(data, size=options.size)
            frames, fps = decoded.frames, decoded.fps
        if len(frames) < options.min_frames:
            return _Encoded(entry.key, f"too short: {len(frames)} frames, need {options.min_frames}")
        fps = float(fps) if fps and fps > 0 else 25.0  # a file without a rate: the UCF101/HMDB51 rate
        ext, payload = codec.encode_frames(frames, fps, options.encoding, options.quality)
    except VideoDecodeError as err:
        return _Encoded(entry.key, err.reason)
    except FileNotFoundError:
        return _Encoded(entry.key, "missing: file not found")
    except Exception as err:  # noqa: BLE001 - any other failure on one video is a skip, listed with its cause
        return _Encoded(entry.key, f"failed: {type(err).__name__}: {err}"[:300])
    height, width = frames.shape[1:3]
    meta = {
        "key": entry.key, "label": entry.label, "class_name": entry.class_name, "num_frames": len(frames),
        "fps": fps, "width": width, "height": height, "source": entry.path, "encoding": options.encoding,
    }
    return _Encoded(entry.key, None, ext, payload, meta, digest, source_bytes)


def _pool(num_workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # forkserver: the parent may hold threads (s3fs event loop, tqdm) that fork would copy mid-state.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["h2s_dist.data.ingest"])  # import av/PIL/numpy once, not once per worker
    return concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context)


def _encoded_in_order(
    entries: Sequence[VideoEntry], options: IngestOptions, num_workers: int
) -> Iterator[_Encoded]:
    """encode_entry over `entries`, results in input order, at most 4 per worker in flight
    (bounds the memory held by finished payloads waiting for a slow one).

    A video that kills its worker process (a decoder crash, the kernel's OOM killer) breaks
    the whole pool and every result in flight with it. The entries that were in flight are
    then encoded one at a time in a pool of their own, so the one that kills its process
    again is found and skipped ("crashed: ..."); the rest go on in a fresh pool."""
    if num_workers <= 0:
        for entry in entries:
            yield encode_entry(entry, options)
        return
    todo = collections.deque(entries)
    while todo:
        in_flight = yield from _encode_in_pool(todo, options, num_workers)
        yield from _encode_each_alone(in_flight, options)


def _encode_in_pool(
    todo: collections.deque, options: IngestOptions, num_workers: int
) -> Generator[_Encoded, None, list[VideoEntry]]:
    """Encode entries taken from `todo` in one pool; returns the entries that were in flight
    (not yet yielded) when a worker died, [] once `todo` is done."""
    with _pool(num_workers) as pool:
        pending: collections.deque = collections.deque()

        def submit_next() -> None:
            entry = todo.popleft()
            pending.append((entry, pool.submit(encode_entry, entry, options)))

        while todo and len(pending) < 4 * num_workers:
            submit_next()
        try:
            while pending:
                try:
                    result = pending[0][1].result()
                except concurrent.futures.BrokenExecutor:
                    return [entry for entry, _ in pending]
                pending.popleft()
                if todo:
                    submit_next()
                yield result
        finally:  # the consumer stopped early (an error) or the pool broke: wait for no one
            for _, future in pending:
                future.cancel()
    return []


def _encode_each_alone(entries: Sequence[VideoEntry], options: IngestOptions) -> Iterator[_Encoded]:
    """encode_entry for each entry in a one-worker pool; an entry whose worker dies is a skip."""
    pool = None
    try:
        for entry in entries:
            pool = pool or _pool(1)
            try:
                yield pool.submit(encode_entry, entry, options).result()
            except concurrent.futures.BrokenExecutor as err:
                pool.shutdown(wait=True)
                pool = None
                yield _Encoded(entry.key, f"crashed: its decoder process died ({err})"[:300])
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- one shard (parent side)


def _write_shard(results: list[_Encoded], shard_uri: str) -> None:
    """The ok samples of one shard -> tar at `shard_uri`, atomically: storage.atomic_write
    spools to a local temp file and renames/uploads it only when the tar is complete."""
    with storage.atomic_write(shard_uri) as dst, shard_tar.open_writer(dst) as tar:
        for r in results:
            if r.reason is None:
                shard_tar.add_member(tar, r.key, r.ext, r.payload)
                shard_tar.add_member(tar, r.key, "json", json.dumps(r.meta, sort_keys=True).encode())


def _done_record(results: list[_Encoded], entries: list[VideoEntry], shard: str) -> UnitRecord:
    """shard: the shard's name relative to the dataset (what the manifest holds)."""
    rows, skipped = [], []
    for r, e in zip(results, entries):
        if r.reason is not None:
            skipped.append(Skip(e.key, e.path, r.reason))
            continue
        rows.append({
            "key": e.key, "shard": shard, "label": e.label, "class_name": e.class_name,
            **{f"split_{n}": e.split(n) for n in (1, 2, 3)},
            "num_frames": r.meta["num_frames"], "fps": r.meta["fps"], "width": r.meta["width"],
            "height": r.meta["height"], "stored_bytes": len(r.payload), "source": e.path,
            "sha256": r.sha256, "encoding": r.meta["encoding"], "source_bytes": r.source_bytes,
        })
    return UnitRecord(rows, skipped, {"shard": shard})


# ----------------------------------------------------------------------------- ingest


def build_listing(
    source: str, root: str | None = None, splits: str | None = None, synthetic: Mapping[str, Any] | None = None
) -> SourceListing:
    """The SourceListing of an `h2s ingest` source (one path for the CLI and the ingest stage).

    ucf101 / hmdb51: the dataset's `root` folder and the folder of its official split lists
    (`splits`; None = no splits, classes from folders); videos: `root` is a folder, a glob or
    a text file of paths (unlabeled); synthetic: `synthetic` holds the fields of
    h2s_dist.data.synthetic.SyntheticMotionConfig (num_videos, num_frames, height, width, seed,
    shared_scenes, ...).
    """
    if source == "ucf101":
        return sources.ucf101_entries(root, splits)
    if source == "hmdb51":
        return sources.hmdb51_entries(root, splits)
    if source == "videos":
        return sources.unlabeled_entries(root)
    if source == "synthetic":
        if synthetic is None:
            raise ValueError("source 'synthetic' needs synthetic={'num_videos': ..., ...} (SyntheticMotionConfig fields)")
        # imported here: it pulls in PyAV, which the other sources do not need
        from h2s_dist.data.synthetic import SyntheticMotionConfig

        return sources.synthetic_entries(SyntheticMotionConfig(**synthetic))
    raise ValueError(f"unknown source {source!r}: use ucf101, hmdb51, videos or synthetic")


def _as_listing(entries: SourceListing | Iterable[VideoEntry]) -> SourceListing:
    if isinstance(entries, SourceListing):
        return entries
    entries = list(entries)
    names = {e.label: e.class_name for e in entries if e.label >= 0}
    classes = [names.get(i, "") for i in range(max(names, default=-1) + 1)]
    return SourceListing("entries", entries, classes)


def _usable_entries(entries: Sequence[VideoEntry]) -> tuple[list[VideoEntry], list[Skip]]:
    """(entries to plan, skips): an entry whose key cannot name a sample or repeats an earlier
    entry's key is skipped and reported, so that one bad entry cannot stop an ingest. The
    sources never make such keys (sources.sanitize_key, sources.unique_keys); entries built
    by hand can."""
    usable, skipped, seen = [], [], set()
    for e in entries:
        if not shard_tar.is_safe_key(e.key):
            skipped.append(Skip(e.key, e.path, f"bad key: {e.key!r} is not [A-Za-z0-9_-]+ (use sources.sanitize_key)"))
        elif e.key in seen:
            skipped.append(Skip(e.key, e.path, "repeated key: another entry has it (use sources.unique_keys)"))
        else:
            seen.add(e.key)
            usable.append(e)
    return usable, skipped


def ingest(
    entries: SourceListing | Iterable[VideoEntry],
    output_uri: str,
    *,
    encoding: str = codec.DEFAULT_ENCODING,
    size: tuple[int, int] | None = DEFAULT_SIZE,
    min_frames: int = 11,
    quality: int | None = None,
    shard_target_bytes: int = DEFAULT_SHARD_TARGET_BYTES,
    num_workers: int = 2,
    resume: bool = True,
    progress: bool = True,
    on_shard_done: Callable[[int], None] | None = None,
) -> IngestReport:
    """Encode `entries` into WebDataset shards + manifest at `output_uri`; see the module doc.

    entries: a SourceListing (sources.ucf101_entries, ...) or VideoEntry records.
    size: (width, height) or None (keep source size). num_workers: decode processes
    (0 = in this process). resume: skip shards an earlier run finished (False: start
    over). progress: videos done on stderr (h2s_dist.progress: a bar on a terminal, plain
    lines elsewhere). on_shard_done(index): called after each shard this run writes (progress hooks,
    tests). Raises ValueError when no video could be ingested.
    """
    t0 = time.perf_counter()
    codec.check_encoding(encoding)
    if min_frames < 1 or shard_target_bytes < 1:
        raise ValueError(f"need min_frames >= 1 and shard_target_bytes >= 1, got {min_frames}, {shard_target_bytes}")
    if size is not None and encoding == "mp4" and (size[0] % 2 or size[1] % 2):
        raise ValueError(f"size {size[0]}x{size[1]}: mp4 (yuv420p) needs an even width and height")
    options = IngestOptions(encoding, tuple(size) if size else None, min_frames, quality, int(shard_target_bytes))
    listing = _as_listing(entries)
    if not listing.entries:
        raise ValueError(f"no videos to ingest from {listing.name} (check the root folder and its layout)")
    usable, unusable = _usable_entries(listing.entries)
    shards = plan_shards(usable, options)
    plan = _plan(shards, options)
    out = ResumableDataset(output_uri, plan_fingerprint(plan), state_dir="_ingest", record_prefix="shard",
                           what="an ingest")
    out.open_plan(plan, resume=resume, remedy="use a new --output, or --no-resume to overwrite it")

    records = out.done_records(len(shards))
    todo = [i for i in range(len(shards)) if i not in records]
    written = _encode_shards([shards[i] for i in todo], todo, out, options, num_workers, progress, on_shard_done)
    records.update(written)
    return _finish(listing, out, options, records, unusable, len(shards) - len(written), time.perf_counter() - t0)


def _encode_shards(
    shards: list[list[VideoEntry]], indices: list[int], out: ResumableDataset, options: IngestOptions,
    num_workers: int, progress: bool, on_shard_done: Callable[[int], None] | None,
) -> dict[int, UnitRecord]:
    from h2s_dist import progress as progress_lines

    flat = [e for shard in shards for e in shard]
    results = _encoded_in_order(flat, options, num_workers)
    records: dict[int, UnitRecord] = {}
    num_skipped, num_done = 0, 0
    bar = progress_lines.build("ingest", len(flat), unit="video", enabled=progress)
    with contextlib.closing(results), contextlib.closing(bar):
        for shard, index in zip(shards, indices):
            done = []
            for _ in shard:
                done.append(next(results))
                num_skipped += done[-1].reason is not None
                num_done += 1
                bar.update(num_done, shard=index, skipped=num_skipped)
            _write_shard(done, out.unit_uri(index))
            records[index] = out.mark_done(index, _done_record(done, shard, out.unit_name(index)))
            if on_shard_done is not None:
                on_shard_done(index)
    return records


def _finish(
    listing: SourceListing, out: ResumableDataset, options: IngestOptions, records: dict[int, UnitRecord],
    unusable: list[Skip], shards_reused: int, seconds: float,
) -> IngestReport:
    rows, skipped = gather(records)
    skipped = unusable + skipped
    report = IngestReport(
        output_uri=out.output_uri, manifest_uri=storage.join(out.output_uri, manifest.MANIFEST_NAME),
        source=listing.name,
        options=asdict(options), num_entries=len(listing.entries), num_ok=len(rows), num_skipped=len(skipped),
        skipped=skipped, missing=list(listing.missing), num_shards=len(records),
        shards_written=len(records) - shards_reused, shards_reused=shards_reused,
        stored_bytes=sum(r["stored_bytes"] for r in rows), source_bytes=sum(r["source_bytes"] for r in rows),
        seconds=round(seconds, 3),
    )
    out.finish(rows, skipped, report.to_dict(), report_name="ingest_report.json", classes=listing.classes,
               nothing_done="no video could be ingested")
    return report
