"""What every training stage shares: the endless clip stream a Task reads, flow pictures,
the weights it hands on, and `run_training`, the body of every training stage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from h2s_dist import frames as frame_conv
from h2s_dist.data import storage
from h2s_dist.data.flow_io import flow_to_color
from h2s_dist.data.shards import TrainStream, TrainStreamConfig, train_loader
from h2s_dist.losses import reconstruction_images
from h2s_dist.models import full_resolution_flow
from h2s_dist.specs.common import DataSpec


def stream_config(data: DataSpec, *, labeled: bool, seed: int, dataset_uri: str | None = None,
                  pin_memory: bool = False) -> TrainStreamConfig:
    """The clip stream a stage's `data` describes, read from `dataset_uri` (default `data.dataset`);
    pin_memory when the batches go to a CUDA device."""
    return TrainStreamConfig(
        dataset_uri=dataset_uri or data.dataset,
        batch_size=data.batch_size,
        split=data.split,
        subset=data.subset,
        clip_len_frames=data.clip_len_frames,
        crop_size=data.crop_size,
        max_distort=data.max_distort,
        flip=data.flip,
        num_workers=data.loader_workers,
        shuffle_buffer=max(data.shuffle_buffer, 1),
        epoch_length_samples=data.epoch_length_samples,
        seed=seed,
        labeled=labeled,
        cache_dir=data.cache_dir,
        cache_max_bytes=data.cache_max_bytes,
        views_per_decode=data.views_per_decode,
        prefetch_batches=data.prefetch_batches,
        pin_memory=pin_memory,
    )


class StreamTask:
    """`batches`, `batch_size` and `network_input` of a Task that reads `self.spec.data` as a
    clip stream.

    Subclasses set `labeled` (False for MotionNet pretraining), and may point the stream
    at another dataset (`dataset_uri`) or reader (`stream_cls`: `shards.TrainStream` for
    frames, `flow_shards.FlowTrainStream` for cached flows).
    """

    spec: Any
    labeled: bool = True
    stream_cls: type[TrainStream] = TrainStream

    @property
    def dataset_uri(self) -> str:
        return self.spec.data.dataset

    def stream_setup(self, seed: int) -> tuple[TrainStreamConfig, type[TrainStream]]:
        """(config, stream class) of this Task's clips: what either feed reads."""
        pin = bool(self.spec.scaling.use_gpu) and torch.cuda.is_available()
        config = stream_config(self.spec.data, labeled=self.labeled, seed=seed, dataset_uri=self.dataset_uri,
                               pin_memory=pin)
        return config, self.stream_cls

    def batches(self, rank: int, world_size: int, position, seed: int):
        """This rank's endless clip stream, from `position` (its checkpoint()) or the start:
        the DataLoader feed (TrainLoader) or the Ray Data feed (RayDataStream), by `data.feed`."""
        config, stream_cls = self.stream_setup(seed)
        if self.spec.data.feed == "ray_data":
            from h2s_dist.data.ray_feed import RayDataStream, rank_iterator

            return RayDataStream(rank_iterator(lambda: self.clip_dataset(seed)), config, stream_cls.to_network_input,
                                 position, shuffle_clips=self.spec.data.ray_data.shuffle_clips)
        return train_loader(config, rank=rank, world_size=world_size, position=position, stream_cls=stream_cls)

    def clip_dataset(self, seed: int):
        """The Ray Data dataset of the `ray_data` feed (built once, by the launcher for a Ray
        Train run or by `batches` in this process)."""
        from h2s_dist.data.ray_feed import clip_dataset

        config, stream_cls = self.stream_setup(seed)
        return clip_dataset(config, stream_cls, self.spec.data.ray_data)

    def network_input(self, clips: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A batch's uint8 clips -> the network's float input on `device`: the copy moves uint8
        (4x fewer bytes than float32; asynchronous from pinned memory), the normalisation
        runs there (`stream_cls.to_network_input`)."""
        return self.stream_cls.to_network_input(clips.to(device, non_blocking=True))

    def batch_size(self, batch) -> int:
        return int(batch[0].shape[0])

    def pictures(self, model, batch, device) -> dict[str, np.ndarray]:
        return {}


def _to_uint8(image01: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (image01.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


MIN_TILE_PX = 256
"""Each picture tile is scaled up to at least this many pixels on its short side."""
LABEL_FONT_PX = 16
LABEL_STRIP_PX = LABEL_FONT_PX + 10


def labelled_row(tiles: list[np.ndarray], labels: list[str], min_tile_px: int = MIN_TILE_PX) -> np.ndarray:
    """Tiles (h, w, 3) uint8 of one size, side by side, each under a header strip naming it.

    A tile is scaled up by a whole factor k (nearest neighbour: the network's pixels stay
    sharp) so that its short side is at least `min_tile_px`: (LABEL_STRIP_PX + k h, n k w, 3) uint8.
    """
    from PIL import Image, ImageDraw, ImageFont

    assert len(tiles) == len(labels) and len({tile.shape for tile in tiles}) == 1, "one label per tile, one size"
    h, w = tiles[0].shape[:2]
    k = max(1, -(-min_tile_px // min(h, w)))
    row = np.concatenate([tile.repeat(k, axis=0).repeat(k, axis=1) for tile in tiles], axis=1)
    canvas = Image.new("RGB", (row.shape[1], LABEL_STRIP_PX + row.shape[0]), (32, 32, 32))
    canvas.paste(Image.fromarray(row), (0, LABEL_STRIP_PX))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=LABEL_FONT_PX)
    for index, label in enumerate(labels):
        draw.text((index * k * w + 6, 4), label, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


FLOW_PICTURE_LABELS = ["frame t", "next frame t+1", "flow t->t+1", "t+1 warped to t", "error |t - warped| x4"]


def flow_picture(clip: torch.Tensor, flow2_raw: torch.Tensor, pair: int = 0) -> np.ndarray:
    """One labelled row to look at (labelled_row, FLOW_PICTURE_LABELS): frame i | frame i+1 |
    flow i (Middlebury colours) | frame i+1 warped back onto frame i | |frame i - warped|
    (bright = the loss sees it).

    clip (T, 3, H, W) network input (normalised); flow2_raw (2(T-1), h, w) raw.
    """
    frames01 = frame_conv.denormalize(clip.float()).unsqueeze(0)
    raw = flow2_raw.float().unsqueeze(0)
    h, w = frames01.shape[-2:]
    flow = full_resolution_flow(raw, (h, w))[0, pair].permute(1, 2, 0).cpu().numpy()
    warped = reconstruction_images(frames01, raw)[0, pair]
    error = (frames01[0, pair] - warped).abs() * 4  # x4: small errors stay visible
    tiles = [
        _to_uint8(frames01[0, pair]),
        _to_uint8(frames01[0, pair + 1]),
        flow_to_color(flow),
        _to_uint8(warped),
        _to_uint8(error),
    ]
    return labelled_row(tiles, FLOW_PICTURE_LABELS)


def save_weights(
    output_uri: str, name: str, state_dict: Mapping[str, torch.Tensor], tracker, register_as: str | None = None
) -> str:
    """Write `output_uri/weights/<name>.pt` (the URI later stages read) and log it to MLflow."""
    from h2s_dist.weights import save_state_dict

    uri = storage.join(output_uri, "weights", f"{name}.pt")
    save_state_dict(dict(state_dict), uri)
    tracker.log_state_dict(state_dict, name, register_as=register_as)
    return uri


def run_training(spec, task, session, tracker, output_uri: str) -> dict:
    """Fit `task` under `spec` and hand on its final weights: the body of every training stage.

    Outputs: {"metrics", "steps", "resumed_from_step", "checkpoint", <weights name>: URI}.
    Each weights name is also a model-registry name (`motionnet`, `stacked_temporal`, ...).
    """
    from h2s_dist.train import dist
    from h2s_dist.train.loop import fit

    device = dist.pick_device(spec.scaling.use_gpu)
    tracker.log_params(spec.model_dump(mode="json"))
    tracker.set_tags({"h2s.stage_kind": spec.kind})
    result = fit(task, spec.loop, spec.optim, session, tracker, device, session.spec_hash,
                 batch_size=spec.data.batch_size)
    outputs: dict = {
        "metrics": result.metrics,
        "steps": result.step,
        "resumed_from_step": result.resumed_from_step,
        "first_batch_checksums": result.first_batch_checksums,
    }
    if dist.is_main():
        for name, state_dict in result.weights.items():
            outputs[name] = save_weights(output_uri, name, state_dict, tracker, register_as=name)
        outputs["checkpoint"] = session.latest_checkpoint_uri()
        best = session.best_checkpoint_uri()
        if best is not None:
            outputs["best_checkpoint"] = best
    return outputs
