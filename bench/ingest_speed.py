"""Ingest speed: videos/s and frames/s of `h2s ingest` on real clips with 1 and 2 Ray nodes.

The first `--num-videos` clips of ../shared/data/videos (by name; MPEG-4 AVI and H.264 MP4,
320x240 to 1326x1252) are ingested at 340x256 (segments of 300 frames, the `videos`
default) with the ingest's Ray-task path into a fresh folder each time, on a Ray cluster of
1 then 2 nodes of one CPU each (`ray.cluster_utils.Cluster` on this machine, started before
the clock starts), `num_tasks` = the cluster's CPUs, so the second row's tasks run on both
nodes as a two-machine cluster's would. The nodes share this machine's cores: the rows show
that the ingest spreads over nodes, not what a second machine adds. `--local` runs the old
way instead: one local Ray, 1 then 2 tasks in flight (`--workers`). Shards are small
(`--shard-size-mb`, 1 MB: 20 clips make ~12 MB of h264 shards) so that there are several
per worker. The load average (`uptime`) before and after each run goes into the table: on
a shared machine it decides the numbers as much as the code does.

    .venv/bin/python bench/ingest_speed.py                      # 20 clips, ~2-4 min on 2 idle cores
    .venv/bin/python bench/ingest_speed.py --num-videos 8 --nodes 1 2
    .venv/bin/python bench/ingest_speed.py --local --workers 1 2

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
from h2s_dist.data.ingest_defaults import DEFAULT_ENCODING  # noqa: E402

VIDEOS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def measure(listing, workers: int, out: str, shard_mb: float, encoding: str, nodes: int | None = None) -> dict:
    from h2s_dist.data.ingest import ingest

    load_before = load_average()
    started = time.perf_counter()
    report = ingest(listing, out, encoding=encoding, segment_frames=300, num_tasks=workers,
                    shard_target_bytes=int(shard_mb * 2**20), progress=False)
    seconds = time.perf_counter() - started
    import pyarrow.parquet as pq

    frames = sum(pq.read_table(f"{out}/manifest.parquet").column("num_frames").to_pylist())
    return {
        "nodes": nodes or 1, "workers": workers, "videos": report.num_ok, "samples": report.num_samples,
        "frames": frames,
        "shards": report.num_shards, "processes": len(report.workers), "seconds": round(seconds, 2),
        "videos_per_s": round(report.num_ok / seconds, 3), "frames_per_s": round(frames / seconds, 1),
        "load_before": load_before, "load_after": load_average(),
        "skipped": [f"{pathlib.Path(k.source).name}: {k.reason}" for k in report.skipped],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", default=str(VIDEOS), help="folder of real clips")
    parser.add_argument("--num-videos", type=int, default=20)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="cluster sizes, one CPU per node")
    parser.add_argument("--local", action="store_true", help="one local Ray instead of clusters; see --workers")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--local: tasks in flight")
    parser.add_argument("--shard-size-mb", type=float, default=1.0)
    parser.add_argument("--encoding", default=DEFAULT_ENCODING, help="shard encoding (default: the ingest's, %(default)s)")
    args = parser.parse_args(argv)

    import ray

    from h2s_dist.data.sources import unlabeled_entries

    listing = unlabeled_entries(args.videos)
    listing.entries = listing.entries[: args.num_videos]
    rows = []
    with tempfile.TemporaryDirectory(prefix="h2s-ingest-bench-") as tmp:
        if args.local:
            ray.init(num_cpus=max(args.workers), include_dashboard=False)
            try:
                for workers in args.workers:
                    rows.append(measure(listing, workers, f"{tmp}/w{workers}", args.shard_size_mb, args.encoding))
                    print(rows[-1], flush=True)
            finally:
                ray.shutdown()
        for nodes in [] if args.local else args.nodes:
            from ray.cluster_utils import Cluster

            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            try:
                for _ in range(nodes - 1):
                    cluster.add_node(num_cpus=1)
                ray.init(address=cluster.address)
                cluster.wait_for_nodes()
                rows.append(measure(listing, nodes, f"{tmp}/n{nodes}", args.shard_size_mb, args.encoding, nodes))
                print(rows[-1], flush=True)
            finally:
                ray.shutdown()
                cluster.shutdown()
    columns = ["nodes", "workers", "videos", "samples", "frames", "shards", "processes", "seconds", "videos_per_s",
               "frames_per_s", "load_before", "load_after"]
    print(format_table(columns, [[row[c] for c in columns] for row in rows]))
    write_results("ingest_speed", {"rows": rows, "num_videos": args.num_videos, "encoding": args.encoding,
                                   "source_bytes": sum(e.size_bytes or 0 for e in listing.entries)})


if __name__ == "__main__":
    main()
