"""Frames with their cached flow alongside: the clip stream of proxy-guided pretraining (paper
Table 4: MotionNet learns with TV-L1 flow as a supervised proxy).

    config = ProxyStreamConfig(**asdict(frame_config), flows_uri=tvl1_outputs["flows"])
    stream = shards.train_loader(config, rank=0, world_size=1, stream_cls=ProxyTrainStream)
    clips, proxy = unpack_proxy_batch(normalize_packed(next(stream)[0]), clip_len_frames=11)
    # clips (B, 11, 3, c, c) as the frame stream's; proxy (B, 20, c, c) px, u0, v0, u1, ...

The frame stream (`shards.train_loader`) with one more read per sample: the video's flow
sample from the flow dataset (same key), the same window of T-1 flows, the same crop box
(`transforms.multiscale_crop_box`), resize and flip as the frames. Flow values follow the
frames: dequantised to pixels, scaled by the resize (u by crop / box width, v by crop / box
height) and u negated on a flip, so the proxy is the flow of the network's input.

Each sample travels as one packed tensor (3T + 2(T-1), c, c), frames first, so the loader,
the loop's checksums and resume stay the frame stream's; `unpack_proxy_batch` splits a batch.
Flow shards are read whole: each worker keeps the last few in memory (`FLOW_SHARDS_KEPT`);
tvl1_flows writes the videos of one frame shard into consecutive flow shards, so a frame
shard's samples need only a few of them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from h2s_dist import frames as frame_conv
from h2s_dist.baseline.tvl1 import dequantize_flow
from h2s_dist.data import manifest, transforms
from h2s_dist.data.codec import ClipDecodeError
from h2s_dist.data.flow_shards import read_flow_info, read_flow_window
from h2s_dist.data.shard_io import Video, iter_samples, read_frame_window
from h2s_dist.data.shards import StreamPosition, TrainStream, TrainStreamConfig
from h2s_dist.data.skips import SkipRecorder

FLOW_SHARDS_KEPT = 4


@dataclass(frozen=True)
class ProxyStreamConfig(TrainStreamConfig):
    """A frame stream's config and the flow dataset read alongside."""

    flows_uri: str = ""
    """Flow dataset (tvl1_flows' `flows`) of the same videos at the frames' size."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.flows_uri:
            raise ValueError("ProxyStreamConfig.flows_uri is empty: name the flow dataset to read alongside")


def pack_proxy_clip(clip: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
    """clip (T, 3, c, c) and proxy (T-1, 2, c, c) -> one (3T + 2(T-1), c, c) tensor."""
    return torch.cat([clip.flatten(0, 1), proxy.flatten(0, 1)])


def unpack_proxy_batch(packed: torch.Tensor, clip_len_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3T + 2(T-1), c, c) -> clips (B, T, 3, c, c), proxy (B, 2(T-1), c, c) (views)."""
    t = clip_len_frames
    assert packed.shape[1] == 3 * t + 2 * (t - 1), f"not a packed {t}-frame proxy batch: {tuple(packed.shape)}"
    b, _, h, w = packed.shape
    return packed[:, : 3 * t].reshape(b, t, 3, h, w), packed[:, 3 * t:]


def resized_flow(flows_px: np.ndarray, size: int) -> torch.Tensor:
    """(L, h, w, 2) float px -> (L, 2, size, size): bilinear, u scaled by size / w, v by size / h."""
    x = torch.from_numpy(np.ascontiguousarray(flows_px)).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x * torch.tensor([size / w, size / h]).view(1, 2, 1, 1)


def normalize_packed(packed: torch.Tensor) -> torch.Tensor:
    """A packed batch (B, 3T + 2(T-1), c, c), frames as 0..255 floats -> the same with the
    frames normalised as `frames.normalize` does (on the device, where the Task calls it) and
    the flow left in pixels."""
    b, channels, h, w = packed.shape
    t = (channels + 2) // 5
    frames = frame_conv.normalize(packed[:, : 3 * t].reshape(b, t, 3, h, w))
    return torch.cat([frames.flatten(1, 2), packed[:, 3 * t:].float()], 1)


class ProxyTrainStream(TrainStream):
    """TrainStream whose clips carry their cached flow (packed; see the module docstring).
    Packed clips are float32 (frames as 0..255 values beside flow in pixels), so this stream
    does not get the frame stream's uint8 transport; proxy guidance is an ablation, not the
    main path."""

    content = "frame+flow"
    min_clip_len_frames = 2  # one flow field per frame pair
    to_network_input = staticmethod(normalize_packed)

    def __init__(self, config: ProxyStreamConfig, videos: list[Video], rank: int, world_size: int,
                 position: StreamPosition) -> None:
        super().__init__(config, videos, rank, world_size, position)
        rows = manifest.read_manifest(config.flows_uri).select(["key", "shard"]).to_pylist()
        self.flow_shard = {r["key"]: manifest.shard_uri(config.flows_uri, r["shard"]) for r in rows}
        self.bound = float(read_flow_info(config.flows_uri)["bound"])
        self._kept: OrderedDict[str, dict[str, dict]] = OrderedDict()

    def flow_sample(self, key: str) -> dict:
        """The flow dataset's sample of video `key` (its shard read whole, kept for the next ones)."""
        if key not in self.flow_shard:
            raise ClipDecodeError(f"video {key} has no flow in {self.config.flows_uri}: compute flows of every video")
        uri = self.flow_shard[key]
        if uri not in self._kept:
            keys = {k for k, u in self.flow_shard.items() if u == uri}
            self._kept[uri] = {s["__key__"]: s for s in iter_samples([uri], keys, SkipRecorder(), self.config.cache_dir)}
            while len(self._kept) > FLOW_SHARDS_KEPT:
                self._kept.popitem(last=False)
        self._kept.move_to_end(uri)
        if key not in self._kept[uri]:
            raise ClipDecodeError(f"video {key} is missing from its flow shard {uri}")
        return self._kept[uri][key]

    def make_clip(self, sample: dict, video: Video, rng: np.random.Generator) -> torch.Tensor:
        """One sample -> packed (3T + 2(T-1), crop, crop): frames as TrainStream's, flows alongside."""
        cfg, length = self.config, self.config.clip_len_frames
        start = transforms.random_window_start(video.num_frames, length, rng)
        frames = read_frame_window(sample, start, length, video.num_frames)
        flows = read_flow_window(self.flow_sample(video.key), start, length - 1, max(video.num_frames - 1, 1))
        if flows.shape[1:3] != frames.shape[1:3]:
            raise ClipDecodeError(f"flows of {video.key} are {flows.shape[2]}x{flows.shape[1]}, its frames "
                                  f"{frames.shape[2]}x{frames.shape[1]}: compute the proxy flows with tvl1_flows size null")
        y0, x0, h, w = transforms.multiscale_crop_box(frames.shape[1], frames.shape[2], rng, cfg.scales, cfg.max_distort)
        frames = transforms.resize_frames(transforms.crop(frames, y0, x0, h, w), (cfg.crop_size, cfg.crop_size))
        proxy = resized_flow(dequantize_flow(transforms.crop(flows, y0, x0, h, w), self.bound), cfg.crop_size)
        if cfg.flip and rng.random() < 0.5:  # mirror x; the flow's u changes sign
            frames = transforms.horizontal_flip(frames)
            proxy = proxy.flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
        return pack_proxy_clip(transforms.channels_first(frames).float(), proxy)

