"""Ingest speed: videos/s and frames/s of `h2s ingest` on real clips with 1 and 2 Ray workers.

The first `--num-videos` clips of ../shared/data/videos (by name; MPEG-4 AVI and H.264 MP4,
320x240 to 1326x1252) are ingested at 340x256 (segments of 300 frames, the `videos`
default) with the ingest's Ray-task path, `num_tasks` = 1 then 2 (tasks in flight, one CPU
each, on one local Ray started first: its start-up is not timed), into a fresh folder each
time. Shards are small (`--shard-size-mb`) so that there are several per worker. The load
average (`uptime`) before and after each run goes into the table: on a shared machine it
decides the numbers as much as the code does.

    .venv/bin/python bench/ingest_speed.py                      # 20 clips, ~2-4 min on 2 idle cores
    .venv/bin/python bench/ingest_speed.py --num-videos 8 --workers 1 2

Writes bench/results/ingest_speed.json.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import format_table, write_results  # noqa: E402

VIDEOS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def measure(listing, workers: int, out: str, shard_mb: float, encoding: str) -> dict:
    from h2s_dist.data.ingest import ingest

    load_before = load_average()
    started = time.perf_counter()
    report = ingest(listing, out, encoding=encoding, segment_frames=300, num_tasks=workers,
                    shard_target_bytes=int(shard_mb * 2**20), progress=False)
    seconds = time.perf_counter() - started
    import pyarrow.parquet as pq

    frames = sum(pq.read_table(f"{out}/manifest.parquet").column("num_frames").to_pylist())
    return {
        "workers": workers, "videos": report.num_ok, "samples": report.num_samples, "frames": frames,
        "shards": report.num_shards, "processes": len(report.workers), "seconds": round(seconds, 2),
        "videos_per_s": round(report.num_ok / seconds, 3), "frames_per_s": round(frames / seconds, 1),
        "load_before": load_before, "load_after": load_average(),
        "skipped": [f"{pathlib.Path(k.source).name}: {k.reason}" for k in report.skipped],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", default=str(VIDEOS), help="folder of real clips")
    parser.add_argument("--num-videos", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-size-mb", type=float, default=8.0)
    parser.add_argument("--encoding", default="jpeg")
    args = parser.parse_args(argv)

    import ray

    from h2s_dist.data.sources import unlabeled_entries

    listing = unlabeled_entries(args.videos)
    listing.entries = listing.entries[: args.num_videos]
    ray.init(num_cpus=max(args.workers), include_dashboard=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="h2s-ingest-bench-") as tmp:
            for workers in args.workers:
                rows.append(measure(listing, workers, f"{tmp}/w{workers}", args.shard_size_mb, args.encoding))
                print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    columns = ["workers", "videos", "samples", "frames", "shards", "processes", "seconds", "videos_per_s",
               "frames_per_s", "load_before", "load_after"]
    print(format_table(columns, [[row[c] for c in columns] for row in rows]))
    write_results("ingest_speed", {"rows": rows, "num_videos": args.num_videos, "encoding": args.encoding,
                                   "source_bytes": sum(e.size_bytes or 0 for e in listing.entries)})


if __name__ == "__main__":
    main()
