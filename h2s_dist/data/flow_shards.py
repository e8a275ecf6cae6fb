"""Flow datasets: precomputed, quantised flow (TV-L1, or a MotionNet's) in WebDataset shards, and their readers.

A flow dataset has the layout of a frame dataset (docs/data.md), one sample per video:
  URI/manifest.parquet   the frame manifest's columns; `shard` = the flow shard, `width`,
                         `height` = the flow fields', `stored_bytes` = bytes of the .flows
                         member, `encoding` = "tvl1_jpeg"; `num_frames` stays the video's
                         frame count T (it holds T - 1 flow fields)
  URI/classes.json       copied from the frame dataset
  URI/flow_info.json     {"bound", "quality", "source_dataset", "size", "source" (tvl1 or motionnet),
                         and the method's settings: "tvl1", or "motionnet", "motionnet_weights", ...}
  URI/shards/shard-NNNNNN.tar   members <key>.flows and <key>.json

<key>.flows is an "H2SF" flow stack: the "H2SJ" container of h2s_dist.data.codec with
2 (T - 1) grayscale JPEGs, u0, v0, u1, v1, ... (quantised as h2s_dist.baseline.tvl1:
q = (clip(f, -bound, bound) + bound) * 255 / (2 bound)). A window of L flows starting
at flow s is the JPEGs [2s, 2s + 2L): one slice, no scanning. Grayscale JPEG (quality
95 by default, as dense_flow's image files) is the standard two-stream storage; each
field costs one JPEG per component, so u and v decode independently.

    stream = flow_train_loader(TrainStreamConfig(flows_uri, batch_size=8, clip_len_frames=11), rank=0, world_size=1)
    flows, labels = next(stream)   # (B, 20, crop, crop) uint8 q; (B,) int64
    x = stream.to_network_input(flows.to(device))  # float32 q - 128 in [-128, 127]

    for item in flow_eval_loader(flows_uri, split=1, rank=0, world_size=1):
        item.clips                 # (25 * 10, 20, 224, 224), window-major; flipped crops have u negated

The readers are the frame readers with another decode step (`shards.train_loader` with
FlowTrainStream, `eval_stream.eval_loader` with FlowEvalStream): the same shard opening,
rank/worker splitting, shuffle buffer, skip records and eval assignment (every video
exactly once across ranks and workers).

Test-time scoring of these flows (a network's scores) is h2s_dist.train.scoring's.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from h2s_dist.baseline.tvl1 import FLOW_MEAN, flip_quantized
from h2s_dist.data import shard_tar, storage, transforms
from h2s_dist.data.codec import ClipDecodeError
from h2s_dist.data.eval_stream import EvalLoader, EvalStream, eval_loader
from h2s_dist.data.shard_io import Video
from h2s_dist.data.shards import (
    StreamPosition,
    TrainLoader,
    TrainStream,
    TrainStreamConfig,
    train_loader,
)

FLOW_EXTENSION = "flows"
FLOW_ENCODING = "tvl1_jpeg"
FLOW_INFO_NAME = "flow_info.json"
DEFAULT_FLOW_QUALITY = 95
ZERO_FLOW_Q = 128  # quantised 0 px (127.5 rounded): pads windows past a short video's end

_MAGIC = b"H2SF"
_VERSION = 1
_HEADER = struct.Struct("<4sB3xIII")  # magic, version, num_images, width, height (as H2SJ)


# ----------------------------------------------------------------------------- flow stack


def encode_flow_stack(flows: np.ndarray, quality: int = DEFAULT_FLOW_QUALITY) -> bytes:
    """Quantised flows (N, H, W, 2) uint8 -> an "H2SF" stack of 2N grayscale JPEGs u0, v0, u1, ..."""
    flows = np.asarray(flows)
    if flows.ndim != 4 or flows.shape[-1] != 2 or flows.dtype != np.uint8 or len(flows) == 0:
        raise ValueError(f"flows must be a non-empty uint8 array (N, H, W, 2), got {flows.dtype} {flows.shape}")
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
    jpegs = []
    for field in flows:
        for component in (field[..., 0], field[..., 1]):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(component)).save(buf, format="JPEG", quality=quality)
            jpegs.append(buf.getvalue())
    offsets = np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).astype("<u4")
    height, width = flows.shape[1:3]
    return b"".join([_HEADER.pack(_MAGIC, _VERSION, len(jpegs), width, height), offsets.tobytes(), *jpegs])


def flow_stack_info(payload: bytes) -> tuple[int, int, int]:
    """(num_flows, width, height) from an "H2SF" header."""
    if len(payload) < _HEADER.size:
        raise ClipDecodeError(f"flow stack of {len(payload)} bytes is shorter than its header")
    magic, version, num_images, width, height = _HEADER.unpack_from(payload)
    if magic != _MAGIC or version != _VERSION or num_images % 2:
        raise ClipDecodeError(f"not an H2SF v{_VERSION} flow stack (magic {magic!r}, version {version})")
    return num_images // 2, width, height


def decode_flow_stack(payload: bytes, start: int = 0, length: int | None = None) -> np.ndarray:
    """Flows [start, start + length) of an "H2SF" stack -> (length, H, W, 2) uint8 (quantised)."""
    num_flows, width, height = flow_stack_info(payload)
    stop = num_flows if length is None else start + length
    if start < 0 or not start < stop <= num_flows:
        raise ClipDecodeError(f"flow window [{start}, {stop}) outside the stack's {num_flows} flows")
    offsets = np.frombuffer(payload, dtype="<u4", count=2 * num_flows + 1, offset=_HEADER.size)
    data = _HEADER.size + offsets.nbytes
    view = memoryview(payload)
    out = np.empty((stop - start, height, width, 2), np.uint8)
    for i in range(2 * start, 2 * stop):
        with Image.open(io.BytesIO(view[data + int(offsets[i]): data + int(offsets[i + 1])])) as image:
            out[i // 2 - start, :, :, i % 2] = np.asarray(image.convert("L"))
    return out


def read_flow_window(sample: dict, start: int, length: int, num_flows: int) -> np.ndarray:
    """Flows [start, start + length) of a sample, clamped to its `num_flows` and padded with
    zero flow (what repeating a short video's last frame gives) -> (length, H, W, 2) uint8."""
    payload = sample.get(FLOW_EXTENSION, sample.get("." + FLOW_EXTENSION))
    if payload is None:
        raise ClipDecodeError(f"sample {sample.get('__key__', '?')} has no '{FLOW_EXTENSION}' member")
    available = max(1, min(length, num_flows - start))
    flows = decode_flow_stack(payload, start, available)
    if available == length:
        return flows
    pad = np.full((length - available,) + flows.shape[1:], ZERO_FLOW_Q, np.uint8)
    return np.concatenate([flows, pad])


# ----------------------------------------------------------------------------- writing


def flow_sample_meta(key: str, row: dict[str, Any], num_flows: int, width: int, height: int, bound: float) -> dict:
    """The <key>.json of a flow sample (row: the video's frame-manifest row)."""
    return {
        "key": key, "label": int(row["label"]), "class_name": row["class_name"], "num_frames": int(row["num_frames"]),
        "num_flows": num_flows, "fps": float(row["fps"]), "width": width, "height": height, "bound": bound,
        "source": row["source"], "encoding": FLOW_ENCODING,
    }


def write_flow_shard(shard_uri: str, samples: Sequence[tuple[str, bytes, dict]]) -> int:
    """(key, .flows payload, meta) samples -> one tar at `shard_uri`, written atomically; its bytes."""
    buffer = io.BytesIO()
    with shard_tar.open_writer(buffer) as tar:
        for key, payload, meta in samples:
            shard_tar.add_member(tar, key, FLOW_EXTENSION, payload)
            shard_tar.add_member(tar, key, "json", json.dumps(meta).encode())
    storage.write_bytes(shard_uri, buffer.getvalue())
    return buffer.tell()


def write_flow_info(flows_uri: str, info: dict[str, Any]) -> None:
    storage.write_bytes(storage.join(flows_uri, FLOW_INFO_NAME), json.dumps(info, indent=1).encode())


def read_flow_info(flows_uri: str) -> dict[str, Any]:
    """URI/flow_info.json: {"bound", "quality", "source_dataset", "size", "source", the method's settings}."""
    uri = storage.join(flows_uri, FLOW_INFO_NAME)
    if not storage.exists(uri):
        raise ValueError(f"{uri} not found: is {flows_uri} a flow dataset? (run the tvl1_flows stage)")
    return json.loads(storage.read_bytes(uri))


# ----------------------------------------------------------------------------- network input


def stack_channels(flows: np.ndarray) -> np.ndarray:
    """(..., L, h, w, 2) -> (..., 2L, h, w), channels u0, v0, u1, v1, ... (the VGG16's order)."""
    moved = np.moveaxis(flows, -1, -3)  # (..., L, 2, h, w)
    return moved.reshape(moved.shape[:-4] + (-1,) + moved.shape[-2:])


def to_network_input(stacked: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Quantised stacked flows (uint8, any shape) -> float32 q - 128, FlowNormalize's scale."""
    x = torch.from_numpy(np.ascontiguousarray(stacked)) if isinstance(stacked, np.ndarray) else stacked
    return x.float() - FLOW_MEAN


def eval_flow_crops(
    flows: np.ndarray, starts: Sequence[int], num_flows: int, crop_size: int, num_crops: int
) -> tuple[np.ndarray, np.ndarray]:
    """Test inputs of one video from its quantised flows (N, H, W, 2), N >= starts[-1] + num_flows.

    -> crops (len(starts) * num_crops, 2 num_flows, crop, crop) uint8, window-major, crops in
    transforms.ten_crops order, u negated (255 - u) on the flipped ones; flipped (n,) bool."""
    all_crops, all_flipped = [], []
    for s in starts:
        crops, flipped = transforms.ten_crops(flows[s:s + num_flows], crop_size)  # (10, L, c, c, 2), a copy
        crops[flipped, ..., 0] = 255 - crops[flipped, ..., 0]
        crops, flipped = transforms.select_crops(crops, flipped, num_crops)
        all_crops.append(crops)
        all_flipped.append(flipped)
    return stack_channels(np.concatenate(all_crops)), np.concatenate(all_flipped)


# ----------------------------------------------------------------------------- training


class FlowTrainStream(TrainStream):
    """TrainStream with a flow decode step: clip_len_frames - 1 flows per clip."""

    content = "flow"
    min_clip_len_frames = 2  # one flow field per frame pair

    @staticmethod
    def to_network_input(stacked: torch.Tensor) -> torch.Tensor:
        """uint8 q (B, 2L, crop, crop), on any device -> float32 q - 128."""
        return to_network_input(stacked)

    def make_clip(self, sample: dict, video: Video, rng: np.random.Generator) -> torch.Tensor:
        """One view of a sample -> (2 (clip_len_frames - 1), crop, crop) uint8 q: a random
        window of flows, a multi-scale corner crop, a random flip (mirror + negate u)."""
        cfg, length = self.config, self.config.clip_len_frames - 1
        num_flows = max(video.num_frames - 1, 1)
        start = transforms.random_window_start(num_flows, length, rng)
        flows = read_flow_window(sample, start, length, num_flows)
        flows = transforms.multiscale_corner_crop(flows, cfg.crop_size, rng, cfg.scales, cfg.max_distort)
        if cfg.flip and rng.random() < 0.5:  # the draw transforms.random_flip makes
            flows = flip_quantized(flows)
        return torch.from_numpy(np.ascontiguousarray(stack_channels(flows)))


def flow_train_loader(config: TrainStreamConfig, *, rank: int, world_size: int,
                      position: StreamPosition | None = None) -> TrainLoader:
    """Rank `rank`'s endless flow training stream, from `position`.

    `config.dataset_uri` is a flow dataset; clips are clip_len_frames - 1 consecutive flow
    fields, multi-scale corner cropped (flow values are not rescaled with the crop, as for
    the release's flow images), flipped with probability 1/2 (mirror + negate u).
    Batches: (B, 2 (clip_len_frames - 1), crop, crop) uint8 q, (B,) int64; the stream's
    `to_network_input` makes them float32 q - 128 in [-128, 127] (on the device).
    Everything else (resampled shards, resume, skips) is `shards.train_loader`'s.
    """
    return train_loader(config, rank=rank, world_size=world_size, position=position, stream_cls=FlowTrainStream)


# ----------------------------------------------------------------------------- evaluation


class FlowEvalStream(EvalStream):
    """EvalStream whose inputs are the flow windows of `eval_flow_crops`."""

    content = "flow"
    min_clip_len_frames = 2  # one flow field per frame pair

    def make_inputs(self, sample: dict, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample -> (clips (num_windows * num_crops, 2 (clip_len - 1), crop, crop), flipped (N,) bool)."""
        length = self.clip_len - 1
        starts = transforms.eval_window_starts(num_frames, self.clip_len, self.num_windows)
        flows = read_flow_window(sample, 0, starts[-1] + length, max(num_frames - 1, 1))
        crops, flipped = eval_flow_crops(flows, starts, length, self.crop_size, self.num_crops)
        clips = to_network_input(crops) if self.normalized else torch.from_numpy(np.ascontiguousarray(crops))
        return clips, torch.from_numpy(flipped)


def flow_eval_loader(
    flows_uri: str, split: int | None, subset: Literal["train", "test"] | None = "test", **options: Any
) -> EvalLoader:
    """Every selected video exactly once across ranks and workers (eval_stream.eval_assignment),
    as EvalItem: clips (num_windows * num_crops, 2 (clip_len_frames - 1), crop, crop),
    window-major, the windows of transforms.eval_window_starts (flows s .. s + clip_len - 2
    of the frame window starting at s), crops in ten_crops order with u negated on the
    flipped ones. normalized: float32 q - 128; False: the uint8 q (4x less memory; a paper
    item is 250 x 20 x 224 x 224 = 250 MB as uint8), convert per chunk with `to_network_input`.
    options: the keywords of `eval_stream.eval_loader` (rank, world_size, clip_len_frames >= 2,
    crop_size, num_windows, num_crops, num_workers, cache_dir, normalized).
    """
    return eval_loader(flows_uri, split, subset, stream_cls=FlowEvalStream, **options)
