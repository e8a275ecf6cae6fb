"""Ingest: video corpora -> WebDataset shards + Parquet manifest at a URI (path or s3://).

    h2s ingest ucf101 /data/UCF-101 --splits /data/ucfTrainTestlist --output s3://bucket/ucf101
    h2s ingest videos 's3://bucket/corpus/**/*.mp4' --output s3://bucket/unlabeled --address auto
    python -m h2s_dist.data.ingest_cli synthetic --output /tmp/synth --num-videos 64 --num-tasks 0

    report = ingest(ucf101_entries(root, splits), "s3://bucket/ucf101")      # Ray tasks, every CPU
    report = ingest(build_listing("synthetic", synthetic={"num_videos": 64}), "/tmp/synth", num_tasks=0)

The command line lives in h2s_dist.data.ingest_cli; one shard's work in h2s_dist.data.ingest_shard.

Steps (docs/data.md has the layout and the encoding numbers):
1. Plan. Entries (listed through the storage module: local paths or s3:// URIs) are sorted by
   (split-1 group: train, test, neither; key) and packed greedily into shards of about
   `shard_target_bytes`, using an *estimate* of each stored video (source bytes, from the
   listing, x a measured stored/source ratio), never mixing split-1 groups in one shard. The
   plan depends only on the inputs and the options, so a rerun makes the same plan; it is
   saved as URI/_ingest/plan.json with a fingerprint.
2. Encode. One unit of work per shard (ingest_shard.encode_shard), run through
   h2s_dist.tasks: Ray tasks of one CPU each over every CPU of the cluster (a local Ray by
   default, `address` or $RAY_ADDRESS for a cluster), or a plain loop in this process with
   `num_tasks=0`. A task stream-decodes its videos (one segment of frames in memory at a
   time; a video longer than `segment_frames` becomes several samples, consecutive ones
   sharing `segment_overlap_frames` frames, so no training window is lost at a cut; a test
   video stays whole, for evaluation), writes the shard tar
   through `storage.atomic_write` and then URI/_ingest/shard-NNNNNN.json (its manifest rows
   and skipped videos), the shard's "done" record. A bad video (undecodable, truncated,
   empty, shorter than `min_frames`) and an entry whose key cannot name a sample are skipped
   and listed with their reason. A video that kills its task's process (a decoder crash, the
   OOM killer) fails its shard's task; the videos of that shard are then tried one per task,
   the ones that kill their process again are skipped ("crashed: ..."), and the shard is
   redone without them: no single input stops the ingest. Keys of any length go in (shards
   are PAX tars, h2s_dist.data.shard_tar).
3. Resume. A rerun with the same plan skips every shard that has a done record and a
   tar; it rewrites none of them. A different plan at the same URI is refused.
4. Finish. manifest.parquet (rows of every shard, in shard order), classes.json and
   ingest_report.json are written from the done records.
Plan, done records, resume and finish are h2s_dist.data.resumable's (tvl1_flows uses them too).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from h2s_dist import progress as progress_lines
from h2s_dist.data import codec, manifest, shard_tar, sources, storage
from h2s_dist.data.ingest_defaults import DEFAULT_SEGMENT_OVERLAP_FRAMES, DEFAULT_SHARD_TARGET_BYTES
from h2s_dist.data.ingest_shard import DEFAULT_SIZE, IngestOptions, encode_shard, probe_entry
from h2s_dist.data.resumable import ResumableDataset, UnitRecord, gather, plan_fingerprint
from h2s_dist.data.skips import Skip, count_kinds
from h2s_dist.data.sources import SourceListing, VideoEntry
from h2s_dist.progress import Progress

__all__ = ["DEFAULT_SIZE", "IngestOptions", "IngestReport", "build_listing", "ingest", "plan_shards"]

# Stored bytes / source bytes per encoding, from bench/data_feed.py and bench/data.py (docs/data.md); only used
# to plan shard sizes, so being off by 2x makes shards 2x off their target, nothing worse.
_ESTIMATED_RATIO = {"h264": 0.6, "jpeg": 7.0, "mp4": 0.3}
_GENERATED_VIDEO_BYTES = 200_000  # estimate for in-memory videos (no source file to stat)
_PLAN_VERSION = 1
_SPLIT1_GROUP = {"train": 0, "test": 1, "": 2}


@dataclass
class IngestReport:
    """What an ingest did; also written as URI/ingest_report.json."""

    output_uri: str
    manifest_uri: str
    source: str
    options: dict[str, Any]
    num_entries: int
    num_ok: int
    """Videos ingested."""
    num_samples: int
    """Samples written: a video longer than the segment length gives several."""
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
    workers: list[str]
    """host:pid of every process that wrote shards in this run (this one with num_tasks 0)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # Skip records become {"key", "source", "reason"}

    def summary(self) -> str:
        reasons = count_kinds(self.skipped)
        segments = f" as {self.num_samples} samples" if self.num_samples != self.num_ok else ""
        lines = [
            f"ingested {self.num_ok} of {self.num_entries} videos{segments} into {self.num_shards} shards "
            f"({self.shards_written} written by {len(self.workers)} workers, {self.shards_reused} already complete) "
            f"in {self.seconds:.1f} s",
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
    source = entry.size_bytes
    if source is None:  # entries built by hand; the sources' listings carry the size
        try:
            source = storage.size(entry.path)
        except OSError:
            source = 0  # missing or unreadable: it will be skipped, it takes no room
    return int(source * _ESTIMATED_RATIO.get(encoding, 1.0))


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
    settings = asdict(options)
    if settings["segment_frames"] is None:  # whole videos: the plan of ingests before segments, which still resume
        del settings["segment_frames"], settings["segment_overlap_frames"]
    # A segmented ingest from before overlaps (and whole test videos) made other samples: its plan
    # lacks segment_overlap_frames, so it differs, and resuming it is refused rather than mixed.
    return {
        "version": _PLAN_VERSION,
        "options": settings,
        "shards": [[[e.key, e.path, e.label, e.class_name, sorted(e.splits.items())] for e in s] for s in shards],
    }


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
    segment_frames: int | None = None,
    segment_overlap_frames: int = DEFAULT_SEGMENT_OVERLAP_FRAMES,
    num_tasks: int | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: bool = True,
    on_shard_done: Callable[[int], None] | None = None,
) -> IngestReport:
    """Encode `entries` into WebDataset shards + manifest at `output_uri`; see the module doc.

    entries: a SourceListing (sources.ucf101_entries, ...) or VideoEntry records.
    size: (width, height) or None (keep source size). segment_frames: a longer video becomes
    several samples (None: whole videos; a test video of any split is never cut), consecutive
    ones sharing segment_overlap_frames frames (windows of up to that + 1 frames are never
    lost at a cut). num_tasks: shards in flight as Ray tasks of one CPU
    (None: twice the cluster's CPUs; 0: one shard after another in this process, without Ray).
    address: the Ray cluster (None: $RAY_ADDRESS, else a local Ray). resume: skip shards an
    earlier run finished (False: start over). progress: videos done on stderr
    (h2s_dist.progress: a bar on a terminal, plain lines elsewhere). on_shard_done(index):
    called in this process after each shard this run writes (progress hooks, tests).
    Raises ValueError when no video could be ingested.
    """
    t0 = time.perf_counter()
    codec.check_encoding(encoding)
    if min_frames < 1 or shard_target_bytes < 1:
        raise ValueError(f"need min_frames >= 1 and shard_target_bytes >= 1, got {min_frames}, {shard_target_bytes}")
    if segment_frames is not None and segment_frames < min_frames:
        raise ValueError(f"segment_frames {segment_frames} < min_frames {min_frames}: a segment must hold a clip")
    if segment_frames is not None and not 0 <= segment_overlap_frames < segment_frames:
        raise ValueError(f"segment_overlap_frames {segment_overlap_frames}: need 0 <= overlap < segment_frames "
                         f"{segment_frames}")
    if size is not None and encoding == "mp4" and (size[0] % 2 or size[1] % 2):
        raise ValueError(f"size {size[0]}x{size[1]}: mp4 (yuv420p) needs an even width and height")
    options = IngestOptions(encoding, tuple(size) if size else None, min_frames, quality, int(shard_target_bytes),
                            segment_frames, segment_overlap_frames)
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
    jobs = [{"index": i, "entries": shard, "options": options, "out": out, "crashed": {}}
            for i, shard in enumerate(shards) if i not in records]
    reused = len(records)
    videos_reused = sum(len(shards[i]) for i in records)
    bar = progress_lines.build("ingest", len(usable), unit="video", initial=videos_reused, enabled=progress)
    try:
        written = _encode_shards(jobs, num_tasks, address, bar, videos_reused, on_shard_done)
    finally:
        bar.close()
    records.update(written)
    workers = sorted({f"{r.extra.get('host', '?')}:{r.extra.get('pid', '?')}" for r in written.values()})
    return _finish(listing, out, options, records, unusable, reused, time.perf_counter() - t0, workers)


def _encode_shards(
    jobs: list[dict[str, Any]], num_tasks: int | None, address: str | None, bar: Progress, videos_done: int,
    on_shard_done: Callable[[int], None] | None,
) -> dict[int, UnitRecord]:
    """Run encode_shard for every job (h2s_dist.tasks); a shard whose task process died is
    redone without the videos that kill a process of their own (see the module doc)."""
    from h2s_dist.tasks import run_tasks

    records: dict[int, UnitRecord] = {}
    skipped = 0
    crashed: list[dict[str, Any]] = []

    def on_done(job: dict[str, Any], record: UnitRecord) -> None:
        nonlocal videos_done, skipped
        records[job["index"]] = record
        videos_done += len(job["entries"])
        skipped += len(record.skipped)
        bar.update(videos_done, shards=len(records), skipped=skipped)
        if on_shard_done is not None:
            on_shard_done(job["index"])

    name = lambda job: f"ingest-shard-{job['index']:06d}"  # noqa: E731
    run_tasks(encode_shard, jobs, num_tasks, on_done, on_crash=lambda job, _: crashed.append(job), name=name,
              address=address)
    if crashed:
        killers = _find_killers([e for job in crashed for e in job["entries"]], jobs[0]["options"], num_tasks)
        redo = [{**job, "crashed": {e.key: killers[e.key] for e in job["entries"] if e.key in killers}}
                for job in crashed]
        run_tasks(encode_shard, redo, num_tasks, on_done, name=name, address=address)
    return records


def _find_killers(entries: list[VideoEntry], options: IngestOptions, num_tasks: int | None) -> dict[str, str]:
    """{key: reason} of the entries whose task process dies when each is encoded alone."""
    from h2s_dist.tasks import run_tasks

    killers: dict[str, str] = {}

    def on_crash(job: dict[str, Any], error: BaseException) -> None:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        killers[job["entry"].key] = f"crashed: its decoder process died ({first_line})"[:300]

    run_tasks(probe_entry, [{"entry": e, "options": options} for e in entries], num_tasks, lambda job, ok: None,
              on_crash=on_crash, max_retries=0, name=lambda job: f"ingest-probe-{job['entry'].key}"[:100])
    return killers


def _finish(
    listing: SourceListing, out: ResumableDataset, options: IngestOptions, records: dict[int, UnitRecord],
    unusable: list[Skip], shards_reused: int, seconds: float, workers: list[str],
) -> IngestReport:
    rows, skipped = gather(records)
    skipped = unusable + skipped
    report = IngestReport(
        output_uri=out.output_uri, manifest_uri=storage.join(out.output_uri, manifest.MANIFEST_NAME),
        source=listing.name, options=asdict(options), num_entries=len(listing.entries),
        num_ok=len({r.get("source_key", r["key"]) for r in rows}), num_samples=len(rows), num_skipped=len(skipped),
        skipped=skipped, missing=list(listing.missing), num_shards=len(records),
        shards_written=len(records) - shards_reused, shards_reused=shards_reused,
        stored_bytes=sum(r["stored_bytes"] for r in rows), source_bytes=sum(r.get("source_bytes", 0) for r in rows),
        seconds=round(seconds, 3), workers=workers,
    )
    out.finish(rows, skipped, report.to_dict(), report_name="ingest_report.json", classes=listing.classes,
               nothing_done="no video could be ingested")
    return report
