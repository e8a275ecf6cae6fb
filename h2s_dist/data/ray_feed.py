"""The `ray_data` feed (DataSpec.feed): clips decoded by Ray Data tasks on any node of the
cluster with free CPUs, streamed to each training rank.

    dataset = clip_dataset(config, TrainStream, spec.data.ray_data)   # the driver, once
    TorchTrainer(..., datasets={FEED_DATASET: dataset})                # train/launch.py
    stream = RayDataStream(rank_iterator(lambda: dataset), config)     # each rank
    clips, labels = next(stream)   # (B, T, 3, crop, crop) uint8, (B,) int64: train_loader's batches
    stream.checkpoint()            # a RayFeedPosition; a resume restarts the feed

The dataset is one row per shard of the selected videos, repeated for whole passes of at
least `epoch_length_samples` clips (`ray.data.from_items`, one block per row, block order
shuffled every epoch), then `flat_map(decode_shard)`: one Ray task per shard that
reads it through the stream class's own `shard_clips`, the per-sample decode of the
DataLoader feed (`make_clip`: window, multi-scale crop, flip, `views_per_decode` clips per
sample; corrupt samples recorded), and yields a row per clip {clip (uint8), label, key,
skipped}. A task asks for `decode_cpus` CPUs and `decode_resources`, never a GPU, so Ray
places it on CPU-only nodes too, and runs as many at once as the cluster's free CPUs allow
(or `max_decode_tasks`): decode capacity grows with CPU nodes.

Each rank reads its share: in a Ray Train worker Ray Train's `streaming_split` of the
trainer's dataset (`get_dataset_shard`, equal rows per rank, disjoint); in this process
(`scaling.num_workers: 0`) the whole dataset through a local Ray, by the same code. Batches
come from `iter_torch_batches` (a local shuffle of `shuffle_clips` clips, whole batches
only, `_collate_fn` to train_loader's tuple). An epoch reads every selected video equally
often (at least epoch_length_samples clips over all ranks); a rank starts the next when one
ends, forever.

Not the loader's resume: Ray Data decides which task makes which clip, so there is no
position to restart at. Decode tasks draw from fresh OS entropy, and a resumed run
restarts the feed at a new epoch: statistically equivalent, not the same clips
(docs/data.md, "Resume"). Ray is imported lazily: `h2s validate` and the loader feed never load it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from h2s_dist.data.shards import StreamPosition, TrainStream, TrainStreamConfig, stream_videos
from h2s_dist.data.skips import Skip, SkipRecorder

log = logging.getLogger(__name__)

FEED_DATASET = "train"
"""The name of the feed in the trainer's `datasets` and in `get_dataset_shard`."""


@dataclass(frozen=True)
class RayFeedPosition:
    """What a rank of the `ray_data` feed saves in a checkpoint: how far it got. A resume
    restarts the feed (a new epoch, fresh draws); the count keeps running."""

    batches: int = 0
    """Batches this rank has taken from the feed, over every run it resumed."""


def decode_shard(row: dict[str, Any], *, config: TrainStreamConfig, stream_cls: type[TrainStream],
                 videos: list) -> Iterator[dict[str, Any]]:
    """One shard (row["shard"]) -> a row per clip, made by `stream_cls.shard_clips`. The skips
    recorded while reading travel with the next clip (the last clip holds the rest), as JSON
    in `skipped`, so the rank that trains on the clips lists them."""
    stream = stream_cls(config, videos, 0, 1, StreamPosition(seed=config.seed))
    recorder, held = SkipRecorder(), None
    # Fresh entropy: which task decodes which shard, and when, is Ray Data's choice, so a seed
    # would not make the stream repeatable; it would only replay the same windows every epoch.
    for clip, label, key in stream.shard_clips(row["shard"], np.random.default_rng(), recorder):
        if held is not None:
            yield held
        held = {"clip": clip.numpy(), "label": label, "key": key, "skipped": _skips_json(recorder)}
    if held is not None:
        held["skipped"] = _merged_skips(held["skipped"], _skips_json(recorder))
        yield held
    elif recorder.skipped:  # a shard without a single clip has no row to carry its skips
        log.warning("no clip from %s; its skips are not listed in skipped.json: %s", row["shard"],
                    [s.to_dict() for s in recorder.drain()])


def _skips_json(recorder: SkipRecorder) -> str:
    return json.dumps([s.to_dict() for s in recorder.drain()])


def _merged_skips(first: str, second: str) -> str:
    return json.dumps(json.loads(first) + json.loads(second))


def clip_dataset(config: TrainStreamConfig, stream_cls: type[TrainStream], feed: Any):
    """The `ray.data.Dataset` of `config`'s clips (see the module doc). feed: a
    specs.common.RayDataFeedSpec (decode_cpus, max_decode_tasks, decode_resources)."""
    import ray.data

    videos = stream_videos(config, stream_cls)
    shards = sorted({v.shard for v in videos})
    # An epoch restarts Ray Data's executor (a second or so, and a ramp-up): whole passes over
    # the videos, at least epoch_length_samples clips, keep that rare on a small dataset.
    passes = max(1, -(-config.epoch_length_samples // (len(videos) * config.views_per_decode)))
    items = [{"shard": shard} for _ in range(passes) for shard in shards]
    compute = ray.data.TaskPoolStrategy(size=feed.max_decode_tasks) if feed.max_decode_tasks else None
    return (
        ray.data.from_items(items, override_num_blocks=len(items))
        .randomize_block_order()
        .flat_map(decode_shard, fn_kwargs={"config": config, "stream_cls": stream_cls, "videos": videos},
                  compute=compute, num_cpus=feed.decode_cpus, resources=dict(feed.decode_resources) or None)
    )


def rank_iterator(build_dataset: Callable[[], Any]):
    """This rank's `ray.data.DataIterator`: Ray Train's split of the trainer's feed dataset
    in a Ray Train worker, else `build_dataset()` read whole in this process (local Ray)."""
    from ray.train.utils import _in_ray_train_worker  # what iter_torch_batches(device="auto") asks too

    if not _in_ray_train_worker():
        from h2s_dist.tasks import ensure_ray

        ensure_ray()
        return build_dataset().iterator()
    import ray.train

    shard = ray.train.get_dataset_shard(FEED_DATASET)
    if shard is None:
        raise RuntimeError(f"the trainer has no {FEED_DATASET!r} dataset: it must be built by train.launch.build_trainer "
                           "from a spec with data.feed ray_data")
    return shard


class RayDataStream:
    """One rank's endless `ray_data` stream: (clips uint8, labels) batches, epoch after epoch;
    the loop's DataStream (`skipped`, `checkpoint()`), as TrainLoader is for the loader feed."""

    def __init__(self, iterator: Any, config: TrainStreamConfig, to_network_input: Callable,
                 position: RayFeedPosition | None = None, shuffle_clips: int = 0) -> None:
        self.config, self.to_network_input = config, to_network_input
        self.position = position or RayFeedPosition()
        self.skipped: list[Skip] = []
        self.last_keys: list[str] = []
        self.epochs_started = 0
        self._iterator, self._shuffle_clips = iterator, shuffle_clips
        self._batches = self._endless()

    def __iter__(self) -> RayDataStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        clips, labels, keys, skipped = next(self._batches)
        self.skipped.extend(skipped)
        self.last_keys = keys
        self.position = RayFeedPosition(self.position.batches + 1)
        return clips, labels

    def checkpoint(self) -> RayFeedPosition:
        """The count so far; the stream goes on undisturbed (nothing to restart at)."""
        return self.position

    def close(self) -> None:
        """Stop reading before Ray shuts down: ends this rank's Ray Data iteration and waits
        for its batch workers to finish."""
        self._batches.close()
        _await_batch_workers()

    def _endless(self) -> Iterator[tuple]:
        cfg = self.config
        shuffle = max(self._shuffle_clips, cfg.batch_size) if self._shuffle_clips else None
        while True:
            self.epochs_started += 1
            empty = True
            for batch in self._iterator.iter_torch_batches(
                batch_size=cfg.batch_size, drop_last=True, collate_fn=_collate_fn(cfg.pin_memory),
                local_shuffle_buffer_size=shuffle, prefetch_batches=cfg.prefetch_batches,
            ):
                empty = False
                yield batch
            if empty:
                raise RuntimeError(
                    f"an epoch of {cfg.dataset_uri} gave this rank no whole batch of {cfg.batch_size}: "
                    "fewer selected videos x views_per_decode than ranks x batch_size"
                )


BATCH_WORKER_THREAD = "iter_threaded"
"""The name Ray Data gives the threads that make an iteration's batches (ray 2.60,
ray/data/_internal/block_batching/util.py)."""


def _await_batch_workers(timeout_s: float = 10.0) -> None:
    """Wait for Ray Data's batch workers to end. They are not joined when their iteration is
    closed: each finishes the batch in hand (fetching its blocks from Ray) and exits within a
    fraction of a second. A ray.shutdown() in that window is fatal: the worker touches the
    shut-down Ray, whose core worker then exits the whole process with status 1 and no message
    (seen as a test run that vanished right after its Ray Data tests passed)."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name == BATCH_WORKER_THREAD and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("a Ray Data batch worker is still running %.0f s after its iteration closed", timeout_s)
                return


def _collate_fn(pin_memory: bool):
    """numpy batch {clip, label, key, skipped} -> (clips uint8, labels int64, keys, [Skip]), the
    tuple TrainStream's workers hand to TrainLoader; a NumpyBatchCollateFn, since Ray Data picks
    the batch format by the collate function's class."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> tuple:
            clips = torch.from_numpy(np.ascontiguousarray(batch["clip"]))
            skipped = [Skip.from_dict(s) for text in batch["skipped"] for s in json.loads(text)]
            return (clips.pin_memory() if pin_memory else clips, torch.from_numpy(batch["label"].astype(np.int64)),
                    [str(k) for k in batch["key"]], skipped)

    return Collate()
