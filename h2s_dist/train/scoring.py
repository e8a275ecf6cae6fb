"""Test-time scoring: a network's pre-softmax scores averaged over a video's test inputs.

    part = score_videos(loader, {"spatial": scorer}, decode_part="decode")
    part.videos[key].scores["spatial"]   # (C,) float32, the mean over the video's inputs
    part.skipped, part.seconds           # the loader's Skip records; seconds per part

`mean_scores` is the one average every stream uses (spatial, stacked, TV-L1), `chunk`
inputs per forward. `score_videos` runs one eval loader's videos through several streams
and times decode and each stream apart; the evaluate stage gathers one `RankScores` per
rank and merges them. For the TV-L1 baseline: `tvl1_eval_scores` scores cached flows,
`tvl1_video_scores` scores one video from its frames with TV-L1 on the fly (decode to
scores, TV-L1 and CNN seconds apart).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from h2s_dist.baseline import tvl1
from h2s_dist.data import transforms
from h2s_dist.data.eval_stream import EvalItem, EvalLoader
from h2s_dist.data.flow_shards import ZERO_FLOW_Q, eval_flow_crops, flow_eval_loader, to_network_input
from h2s_dist.data.skips import Skip
from h2s_dist.models.stacked import StackedOutput
from h2s_dist.progress import NullProgress, Progress


def mean_scores(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    chunk: int,
    bf16: bool = False,
) -> torch.Tensor:
    """Mean pre-softmax scores (C,) float32 on the CPU over the N inputs of one video.

    inputs (N, ...) as stored (uint8 frames or quantised flows); `to_input` turns a chunk,
    moved to `device`, into the network's input. `model` returns scores (B, C) or a
    StackedOutput (the stacked stream's). Forwards `chunk` inputs at a time, bf16 autocast
    when asked; the sum is accumulated in float32."""
    total = None
    with torch.no_grad():
        for part in inputs.split(chunk):
            x = to_input(part.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            scores = (out.scores if isinstance(out, StackedOutput) else out).float().sum(0)
            total = scores if total is None else total + scores
    return (total / len(inputs)).cpu()


@dataclass
class ScoredVideo:
    """One video's label and its mean pre-softmax scores (C,) per stream."""

    label: int
    scores: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class RankScores:
    """What scoring returns: the scored videos, the loaders' skip records (h2s_dist.data.skips)
    and seconds per part (decode, then one per stream)."""

    videos: dict[str, ScoredVideo] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, label: int, stream: str, scores: np.ndarray) -> None:
        video = self.videos.setdefault(key, ScoredVideo(label))
        assert video.label == label, f"{key}: label {label} from {stream}, {video.label} before"
        video.scores[stream] = scores

    @classmethod
    def merge(cls, parts: Iterable[RankScores]) -> RankScores:
        """One result from several (sources of one rank, or every rank): a video's streams
        are joined, skip records listed, seconds summed per part."""
        merged = cls()
        for part in parts:
            for key, video in part.videos.items():
                for stream, scores in video.scores.items():
                    merged.add(key, video.label, stream, scores)
            merged.skipped.extend(part.skipped)
            for name, seconds in part.seconds.items():
                merged.seconds[name] = merged.seconds.get(name, 0.0) + seconds
        return merged


def score_videos(
    loader: EvalLoader, scorers: dict[str, Callable[[EvalItem], torch.Tensor]], *, decode_part: str | None,
    progress: Progress = NullProgress(),
) -> RankScores:
    """Every video of `loader` scored by every scorer (stream name -> item -> scores (C,)).

    Seconds: each stream's scoring under its name; waiting for the loader's items under
    `decode_part`, or, when None, added to every stream's own seconds. progress: told the
    videos scored so far (h2s_dist.progress), closed at the end."""
    result = RankScores(seconds=dict.fromkeys([decode_part] if decode_part else [], 0.0))
    result.seconds.update(dict.fromkeys(scorers, 0.0))
    items = iter(loader)
    while True:
        start = time.perf_counter()
        item = next(items, None)
        waited = time.perf_counter() - start
        for part in [decode_part] if decode_part else scorers:
            result.seconds[part] += waited
        if item is None:
            break
        for name, scorer in scorers.items():
            start = time.perf_counter()
            result.add(item.key, item.label, name, scorer(item).numpy())
            result.seconds[name] += time.perf_counter() - start
        progress.update(len(result.videos), skipped=len(loader.skipped) or None)
    progress.close()
    result.skipped.extend(loader.skipped)
    return result


# ----------------------------------------------------------------------------- TV-L1 baseline


def tvl1_eval_scores(
    vgg: torch.nn.Module,
    flows_uri: str,
    split: int | None,
    subset: Literal["train", "test"] | None,
    rank: int,
    world_size: int,
    num_windows: int = 25,
    num_crops: int = 10,
    crop_size: int = 224,
    device: torch.device | str = "cpu",
    batch: int = 50,
    num_workers: int = 0,
    cache_dir: str | None = None,
) -> dict[str, tuple[int, torch.Tensor]]:
    """{key: (label, scores (C,))} of this rank's videos (each video on exactly one rank):
    pre-softmax scores averaged over num_windows x num_crops inputs of cached flows
    (flipped crops have u negated). Clip length follows the VGG16's input: 2 (L - 1) channels.
    Skipped videos are absent (the loader lists them)."""
    device = torch.device(device)
    vgg = vgg.to(device).eval()
    clip_len = vgg.config.in_channels // 2 + 1
    loader = flow_eval_loader(
        flows_uri, split, subset, rank=rank, world_size=world_size, clip_len_frames=clip_len,
        crop_size=crop_size, num_windows=num_windows, num_crops=num_crops, num_workers=num_workers,
        cache_dir=cache_dir, normalized=False,
    )
    part = score_videos(
        loader, {"tvl1": lambda item: mean_scores(vgg, item.clips, to_network_input, device=device, chunk=batch)},
        decode_part=None,
    )
    return {key: (video.label, torch.from_numpy(video.scores["tvl1"])) for key, video in part.videos.items()}


@dataclass(frozen=True)
class VideoScores:
    """One video scored from its frames: scores (C,) pre-softmax mean; seconds spent in
    TV-L1 (flow of the needed pairs + quantisation) and in the CNN (crops + forward)."""

    scores: torch.Tensor
    tvl1_s: float
    cnn_s: float
    num_pairs: int


def tvl1_video_scores(
    vgg: torch.nn.Module,
    frames: np.ndarray,
    *,
    num_windows: int = 25,
    num_crops: int = 10,
    crop_size: int = 224,
    device: torch.device | str = "cpu",
    batch: int = 50,
    bf16: bool = False,
    bound: float = tvl1.DEFAULT_BOUND_PX,
    params: tvl1.TVL1Params = tvl1.DEFAULT_PARAMS,
) -> VideoScores:
    """Decode-to-scores of the two-stage baseline for one video, frames (T, H, W, 3) uint8
    RGB (already at the test size, 340x256 for the paper): TV-L1 of every frame pair the
    test windows use (each pair once, though windows overlap), then the windows x crops
    of `tvl1_eval_scores`. Times TV-L1 and CNN separately (the paper's fps split)."""
    device = torch.device(device)
    clip_len = vgg.config.in_channels // 2 + 1
    length, num_flows = clip_len - 1, max(len(frames) - 1, 1)
    starts = transforms.eval_window_starts(len(frames), clip_len, num_windows)
    needed = sorted({i for s in starts for i in range(s, s + length) if i < num_flows and len(frames) > 1})
    started = time.perf_counter()
    flows = np.full((starts[-1] + length,) + frames.shape[1:3] + (2,), ZERO_FLOW_Q, np.uint8)
    gray = {}
    for i in needed:
        for j in (i, i + 1):
            if j not in gray:
                gray[j] = tvl1.to_gray(frames[j])
        flows[i] = tvl1.quantize_flow(tvl1.tvl1_flow(gray[i], gray[i + 1], params), bound)
    tvl1_s = time.perf_counter() - started
    started = time.perf_counter()
    crops, _ = eval_flow_crops(flows, starts, length, crop_size, num_crops)
    vgg = vgg.to(device).eval()
    inputs = torch.from_numpy(np.ascontiguousarray(crops))
    scores = mean_scores(vgg, inputs, to_network_input, device=device, chunk=batch, bf16=bf16)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return VideoScores(scores, tvl1_s, time.perf_counter() - started, len(needed))
