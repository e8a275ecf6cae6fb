"""Part "cluster" of bench/data_feed.py: the `ray_data` feed (h2s_dist.data.ray_feed) on a
two-node Ray cluster on this machine, where adding a CPU-only decode node should raise the
clips/s a trainer receives.

    .venv/bin/python bench/data_feed.py --cluster            # ~3 min on 2 busy cores
    .venv/bin/python bench/data_feed.py --cluster --measure-s 20 --clips 12

The real clips (every 4th of ../shared/data/videos by default) are ingested once as h264 at
340x256 in 32-frame segments (many small samples, 1 MB shards: many decode tasks per epoch).
A `ray.cluster_utils.Cluster` starts a head node (2 CPUs; custom resources `trainer: 1`, one
`decode` slot). A consumer actor on the head (1 CPU, `trainer: 1`) stands in for a Ray Train
worker: it reads Ray Train's kind of split (`streaming_split(1)`, executed by Ray Data's split
coordinator) through the feed's own `RayDataStream` (iter_torch_batches, batch 8, 11 frames
cropped to 224, uint8) and counts the clips it receives per wall second, after a warm-up.
Decode tasks ask for 1 CPU and 1 `decode`, so their number is the `decode` slots:
  head only          1 slot on the head
  + CPU-only node    a second node (2 CPUs, 2 `decode` slots, no `trainer`): 3 slots
  CPU-only node only decode asks for `cpu_node` instead, which only the added node has: every
                     clip the trainer gets was decoded there
The two nodes are processes on the same 2 physical cores (shared with other jobs): the rows
show that the feed places decode on a CPU-only node and scales out with it, not what a real
second machine adds.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time

SEGMENT_FRAMES = 32
SHARD_BYTES = 1 << 20
BATCH = 8


def ingest_real_clips(paths: list[str], out: str, size: tuple[int, int]) -> str:
    """The clips as an h264 dataset at `out` (reused when a manifest is already there)."""
    from h2s_dist.data.ingest import ingest
    from h2s_dist.data.sources import unlabeled_entries

    if not os.path.exists(os.path.join(out, "manifest.parquet")):
        listing = pathlib.Path(out + ".txt")
        listing.write_text("\n".join(paths) + "\n")
        ingest(unlabeled_entries(str(listing)), out, encoding="h264", size=size, segment_frames=SEGMENT_FRAMES,
               shard_target_bytes=SHARD_BYTES, num_tasks=0, progress=False)
    return out


def _consumer_class():
    import ray

    @ray.remote(num_cpus=1, resources={"trainer": 1})
    class Consumer:
        """A Ray Train worker's view of the feed: a DataIterator, batches pulled as fast as they come."""

        def rate(self, iterator, config, warmup_s: float, measure_s: float) -> dict:
            import torch

            from h2s_dist.data.ray_feed import RayDataStream

            torch.set_num_threads(1)
            stream = RayDataStream(iterator, config, lambda x: x, shuffle_clips=16)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < warmup_s:  # task workers start, imports, first epoch
                next(stream)
            clips, t1, cpu1 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - t1 < measure_s:
                batch, _ = next(stream)
                clips += int(batch.shape[0])
            seconds, cpu = time.perf_counter() - t1, time.process_time() - cpu1
            stream.close()
            return {"clips": clips, "seconds": round(seconds, 1), "clips_per_s": round(clips / seconds, 1),
                    "consumer_cpu_share": round(cpu / seconds, 2), "epochs_started": stream.epochs_started}

    return Consumer


def _measure(dataset_uri: str, decode_resource: str, warmup_s: float, measure_s: float) -> dict:
    import ray

    from h2s_dist.data.ray_feed import clip_dataset
    from h2s_dist.data.shards import TrainStream, TrainStreamConfig
    from h2s_dist.specs.common import RayDataFeedSpec

    config = TrainStreamConfig(dataset_uri, batch_size=BATCH, split=None, subset=None, labeled=False,
                               clip_len_frames=11, crop_size=224, prefetch_batches=2)
    feed = RayDataFeedSpec(decode_cpus=1, decode_resources={decode_resource: 1})
    dataset = clip_dataset(config, TrainStream, feed)
    (iterator,) = dataset.streaming_split(1, equal=True)  # what Ray Train hands a worker
    consumer = _consumer_class().remote()
    load = os.getloadavg()[0]
    result = ray.get(consumer.rate.remote(iterator, config, warmup_s, measure_s))
    ray.kill(consumer)
    return {**result, "load_avg_1min_before": round(load, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)}


def bench_cluster(paths: list[str], size: tuple[int, int], warmup_s: float, measure_s: float,
                  work_dir: str | None = None) -> dict:
    """The three rows (see the module doc) and what they ran on."""
    import ray
    from ray.cluster_utils import Cluster

    work = work_dir or tempfile.mkdtemp(prefix="h2s-feed-cluster-")
    t0 = time.perf_counter()
    dataset = ingest_real_clips(paths, os.path.join(work, "ds-h264"), size)
    print(f"cluster: dataset {dataset} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    store = 300 * 2**20
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"trainer": 1, "decode": 1}, "object_store_memory": store})
    rows = []
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        row = {"decode_on": "head only", "decode_slots": 1, **_measure(dataset, "decode", warmup_s, measure_s)}
        rows.append(row)
        print(f"cluster: {row}", flush=True)
        cluster.add_node(num_cpus=2, resources={"decode": 2, "cpu_node": 2}, object_store_memory=store)
        cluster.wait_for_nodes()
        for name, resource, slots in (("head + CPU-only node", "decode", 3), ("CPU-only node only", "cpu_node", 2)):
            row = {"decode_on": name, "decode_slots": slots, **_measure(dataset, resource, warmup_s, measure_s)}
            rows.append(row)
            print(f"cluster: {row}", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {
        "rows": rows, "clips_ingested": len(paths), "segment_frames": SEGMENT_FRAMES, "shard_bytes": SHARD_BYTES,
        "batch_size": BATCH, "clip_len_frames": 11, "crop_size": 224, "warmup_s": warmup_s, "measure_s": measure_s,
        "note": f"both nodes are processes on this machine's {os.cpu_count()} cores (shared with other jobs): "
                "the rows show decode placed on, and scaling out with, a CPU-only node, not a second machine's gain",
    }
