"""Scaling: MotionNet pretraining samples/s at 1 and 2 Ray Train workers, and loader clips/s.

Part "train": the pretrain_motionnet stage through `h2s_dist.train.launch.launch` with
scaling.num_workers 1 and then 2 (Ray Train, gloo), the same per-worker batch (weak
scaling), tiny MotionNet on a small synthetic dataset; the figure is the stage's own
`throughput/samples_per_s` over its last logging window (all ranks' samples), so Ray and
process start-up are excluded. On a 2-core machine 2 workers share the cores with
everything else: read the ratio as "how well the loop distributes", not as a cluster's.

Part "loader": clips/s out of `train_loader` from file:// and from s3:// on a local rclone
S3 server (h2s_dist.data.s3server.LocalS3Server), reusing bench/data_stream.py's helpers.

    .venv/bin/python bench/scaling.py --quick              # ~2-4 min on 2 cores
    .venv/bin/python bench/scaling.py --workers 1 2 4 --steps 60

Writes bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import data_stream  # noqa: E402
from bench._common import format_table, write_results  # noqa: E402


def pretrain_throughput(dataset: str, out: str, num_workers: int, args: argparse.Namespace) -> dict:
    """One pretrain run at `num_workers` Ray workers; samples/s of its last logging window."""
    from h2s_dist.train.launch import launch
    from h2s_dist.specs.training import PretrainSpec

    log_every = max(1, args.steps // 3)
    spec = PretrainSpec.model_validate({
        "motionnet": {"flavour": "tiny"},
        "data": {"dataset": dataset, "crop_size": args.crop, "batch_size": args.batch, "loader_workers": 0,
                 "shuffle_buffer": 8, "epoch_length_samples": 64},
        "optim": {"name": "adam", "lr": 1e-3, "milestones": []},
        "loop": {"max_steps": args.steps, "log_every_steps": log_every, "picture_every_steps": 100 * args.steps,
                 "checkpoint_every_steps": args.steps},
        "scaling": {"num_workers": num_workers, "cpus_per_worker": 1},
    })
    start = time.perf_counter()
    outputs = launch("pretrain_motionnet", spec, out)
    wall = time.perf_counter() - start
    rate = outputs["metrics"]["throughput/samples_per_s"]
    return {"workers": num_workers, "per_worker_batch": args.batch, "samples_per_s": rate,
            "per_worker_samples_per_s": rate / num_workers, "wall_s": round(wall, 1), "steps": args.steps}


def small_dataset(out: str) -> str:
    """18 synthetic videos of 24 frames at 80x64 (jpeg shards): decoding stays cheap next to the model."""
    from h2s_dist.data.ingest import ingest
    from h2s_dist.data.sources import synthetic_entries
    from h2s_dist.data.synthetic import SyntheticMotionConfig

    config = SyntheticMotionConfig(num_videos=18, num_frames=24, height=64, width=80)
    ingest(synthetic_entries(config), out, size=None, num_tasks=0, progress=False)
    return out


def bench_train(tmp: pathlib.Path, args: argparse.Namespace) -> list[dict]:
    import ray

    dataset = small_dataset(str(tmp / "train-ds"))
    rows = []
    try:
        for n in args.workers:
            row = pretrain_throughput(dataset, str(tmp / f"pretrain-{n}"), n, args)
            rows.append(row)
            print(f"  {n} worker(s): {row['samples_per_s']:.2f} samples/s (wall {row['wall_s']} s)", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    base = rows[0]["samples_per_s"] / rows[0]["workers"] if rows else 1.0
    for row in rows:
        row["speedup_vs_1"] = row["samples_per_s"] / base
    return rows


def bench_loader(tmp: pathlib.Path, args: argparse.Namespace) -> list[dict]:
    local = data_stream.make_dataset(str(tmp / "ds"), 12, 40)
    rows = []
    with contextlib.ExitStack() as stack:
        sources = {"file": local, "s3": data_stream.copy_dataset(local, data_stream.start_s3_server(str(tmp / "s3"),
                                                                                                   stack))}
        for name, uri in sources.items():
            r = data_stream.measure(uri, workers=0, batches=args.loader_batches, batch_size=8, cache_dir=None)
            rows.append({"source": name, "loader_workers": 0, **r})
            print(f"  {name:5s} {r['clips_per_s']:8.1f} clips/s", flush=True)
    return rows


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="30 steps per run, 4 loader batches")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=None, help="pretrain steps per run (default 60; --quick 30)")
    p.add_argument("--batch", type=int, default=4, help="per-worker batch")
    p.add_argument("--crop", type=int, default=64, help="crop side (multiple of 32)")
    p.add_argument("--loader-batches", type=int, default=None, help="default 20 (--quick 4)")
    p.add_argument("--parts", nargs="+", choices=("train", "loader"), default=["train", "loader"])
    args = p.parse_args(argv)
    args.steps = args.steps or (30 if args.quick else 60)
    args.loader_batches = args.loader_batches or (4 if args.quick else 20)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    import torch

    torch.set_num_threads(1)
    payload: dict = {"settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        if "train" in args.parts:
            print("pretrain_motionnet on Ray Train (gloo):", flush=True)
            payload["train"] = bench_train(tmp, args)
        if "loader" in args.parts:
            print("train_loader clips/s (crop 224, batch 8, 11-frame clips):", flush=True)
            payload["loader"] = bench_loader(tmp, args)
    if "train" in payload:
        print()
        print(format_table(["workers", "per-worker batch", "samples/s", "per worker", "speed-up"],
                           [[r["workers"], r["per_worker_batch"], r["samples_per_s"], r["per_worker_samples_per_s"],
                             r["speedup_vs_1"]] for r in payload["train"]]))
    if "loader" in payload:
        print()
        print(format_table(["source", "clips/s", "first batch s"],
                           [[r["source"], r["clips_per_s"], r["first_batch_s"]] for r in payload["loader"]]))
    path = write_results("scaling", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
