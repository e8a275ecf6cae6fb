"""Streaming benchmark: training clips per second out of h2s_dist.data.shards.train_loader.

    .venv/bin/python bench/data_stream.py --quick          # ~1 min on 2 cores
    .venv/bin/python bench/data_stream.py --dataset s3://bucket/ucf101 --workers 0 4 8

Without --dataset, a synthetic dataset at the paper's frame size (340x256, JPEG stacks)
is ingested into a temporary folder and, with --s3, copied to a local S3 server
(h2s_dist.data.s3server.LocalS3Server, rclone on loopback) to compare file:// with s3://,
streamed and through a shard cache. Each row reads --batches batches of --batch-size
11-frame clips at crop 224 after one warm-up batch (DataLoader start-up excluded).
Results: a table on stdout and bench/results/data_stream.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from h2s_dist.data import storage  # noqa: E402
from h2s_dist.data.shards import TrainStreamConfig, train_loader  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "data_stream.json"


def make_dataset(out: str, num_videos: int, num_frames: int) -> str:
    """A synthetic dataset at 340x256 (what ingest stores for UCF101), JPEG stacks."""
    from h2s_dist.data.ingest import ingest
    from h2s_dist.data.sources import synthetic_entries
    from h2s_dist.data.synthetic import SyntheticMotionConfig

    config = SyntheticMotionConfig(num_videos=num_videos, num_frames=num_frames, height=256, width=340)
    ingest(synthetic_entries(config), out, size=None, shard_target_bytes=800_000, num_tasks=0, progress=False)
    return out


def copy_dataset(src: str, dst_uri: str) -> str:
    """Copy manifest, classes and shards of a local dataset to `dst_uri` through storage."""
    root = pathlib.Path(src)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "_ingest" not in p.parts):
        storage.write_bytes(storage.join(dst_uri, *path.relative_to(root).parts), path.read_bytes())
    return dst_uri


def measure(dataset_uri: str, *, workers: int, batches: int, batch_size: int, cache_dir: str | None) -> dict:
    """Clips per second over `batches` batches after one warm-up batch."""
    config = TrainStreamConfig(
        dataset_uri, batch_size=batch_size, epoch_length_samples=(batches + 1) * batch_size,
        num_workers=workers, shuffle_buffer=8, cache_dir=cache_dir,
    )
    loader = train_loader(config, rank=0, world_size=1)  # endless: one epoch is batches + 1
    t0 = time.perf_counter()
    next(loader)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    count = sum(clips.shape[0] for clips, _ in itertools.islice(loader, batches))
    elapsed = time.perf_counter() - t0
    return {"clips": count, "seconds": round(elapsed, 3), "clips_per_s": round(count / elapsed, 2),
            "first_batch_s": round(warmup_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small synthetic dataset, few batches")
    parser.add_argument("--dataset", help="an ingested dataset URI (default: generate one)")
    parser.add_argument("--s3", action="store_true", help="also stream from a local S3 server")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = args.batches or (4 if args.quick else 20)

    with tempfile.TemporaryDirectory() as tmp:
        sources = {"given": args.dataset} if args.dataset else {
            "file": make_dataset(os.path.join(tmp, "ds"), 12 if args.quick else 48, 40)
        }
        rows = []
        with contextlib.ExitStack() as stack:
            if args.s3 and not args.dataset:
                sources["s3"] = copy_dataset(sources["file"], start_s3_server(os.path.join(tmp, "s3"), stack))
            for name, uri in sources.items():
                variants = [(name, None)]
                if storage.is_remote(uri):
                    variants.append((name + "+cache", os.path.join(tmp, f"cache-{name}")))
                for label, cache in variants:
                    for workers in args.workers:
                        r = measure(uri, workers=workers, batches=batches, batch_size=args.batch_size, cache_dir=cache)
                        rows.append({"source": label, "workers": workers, **r})
                        print(f"{label:10s} workers={workers}  {r['clips_per_s']:8.1f} clips/s  ({r['clips']} clips "
                              f"in {r['seconds']} s, first batch {r['first_batch_s']} s)", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"train_stream": rows, "batch_size": args.batch_size, "clip_len_frames": 11,
                                   "crop_size": 224, "cores": os.cpu_count()}, indent=1))
    print(f"wrote {RESULTS}")


def start_s3_server(root: str, stack: contextlib.ExitStack) -> str:
    """A local S3 server over `root` for the rest of `stack`; the environment points at it."""
    from h2s_dist.data.s3server import LocalS3Server

    server = stack.enter_context(LocalS3Server(root))
    saved = dict(os.environ)
    os.environ.update(server.env())
    stack.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
    return server.create_bucket("bench") + "/ds"


if __name__ == "__main__":
    main()
