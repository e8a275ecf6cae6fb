"""Every stream the evaluate stage scores, in one table, and the sources its inputs come from.

    for stream in STREAMS.values():
        if stream.enabled(spec):
            model = stream.build(spec, num_classes)          # then load getattr(spec, stream.weights)
            scores = scoring.mean_scores(model, stream.inputs(item.clips), stream.to_input, ...)

A stream reads one source: `frames` (the frame dataset's test windows, decoded once for
all frame streams) or `flows` (cached TV-L1 flows). A temporal stream names its late
fusion with the spatial stream (`fusions()`). Adding a stream is one entry in STREAMS
and its weights field on EvaluateSpec: scoring, metrics, confusion matrices, per-class
accuracy, scores.npz and fusion follow from the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from h2s_dist import frames as frame_conv
from h2s_dist.data.eval_stream import EvalLoader, eval_loader
from h2s_dist.data.flow_shards import flow_eval_loader, to_network_input
from h2s_dist.models import build_vgg16
from h2s_dist.specs.evaluate import EvaluateSpec
from h2s_dist.train.builders import build_stacked, build_temporal_vgg, flow_stack_channels


@dataclass(frozen=True)
class Source:
    """Where streams' test inputs come from: one eval loader per rank, shared by its streams."""

    name: str
    uri_field: str
    """EvaluateSpec field with the dataset's URI; unset turns off the streams that read it."""
    open: Callable[[EvaluateSpec, int, int], EvalLoader]
    """(spec, rank, world_size) -> this rank's loader of uint8 inputs (num_windows x num_crops per video)."""
    decode_part: str | None
    """Seconds part the wait for its items is timed under, charged in full to every stream
    reading it (each method pays for decode); None: inside each stream's own seconds."""


@dataclass(frozen=True)
class Fusion:
    """A late fusion: `partner`'s scores (weight fusion_weights[0]) with the stream's (weight [1])."""

    name: str
    partner: str = "spatial"


@dataclass(frozen=True)
class Stream:
    """One scored stream: where its weights are named, how its network is built, what it scores."""

    name: str
    """Metric, confusion figure and scores.npz name."""
    weights: str
    """EvaluateSpec field with its weights URI; unset skips the stream."""
    source: str
    """Key of SOURCES its inputs come from."""
    build: Callable[[EvaluateSpec, int], torch.nn.Module]
    """(spec, num_classes) -> the randomly initialised network its weights load into."""
    inputs: Callable[[torch.Tensor], torch.Tensor]
    """A video's clips (N, ...) uint8 from its source -> the inputs this stream scores."""
    to_input: Callable[[torch.Tensor], torch.Tensor]
    """A chunk of those inputs (on the device) -> network input."""
    fusion: Fusion | None = None
    """Its late fusion with another stream, if any."""
    fps_name: str | None = None
    """Name of its `fps/` metric when not `name`."""

    def enabled(self, spec: EvaluateSpec) -> bool:
        return bool(getattr(spec, self.weights) and getattr(spec, SOURCES[self.source].uri_field))

    @property
    def fps_metric(self) -> str:
        return f"fps/{self.fps_name or self.name}"


def _frame_loader(spec: EvaluateSpec, rank: int, world_size: int) -> EvalLoader:
    return eval_loader(
        spec.dataset, spec.split, spec.subset, rank=rank, world_size=world_size,
        clip_len_frames=spec.clip_len_frames, crop_size=spec.crop_size, num_windows=spec.num_windows,
        num_crops=spec.num_crops, num_workers=spec.loader_workers, normalized=False,
    )


def _flow_loader(spec: EvaluateSpec, rank: int, world_size: int) -> EvalLoader:
    # Read in this process (no loader workers), as the cached TV-L1 stream always was.
    return flow_eval_loader(
        spec.tvl1_flows, spec.split, spec.subset, rank=rank, world_size=world_size,
        clip_len_frames=spec.clip_len_frames, crop_size=spec.crop_size, num_windows=spec.num_windows,
        num_crops=spec.num_crops, num_workers=0, normalized=False,
    )


def _centre_frames(clips: torch.Tensor) -> torch.Tensor:
    """(N, T, 3, H, W) windows -> (N, 3, H, W): one frame per window and crop."""
    return clips[:, clips.shape[1] // 2]


def _whole(clips: torch.Tensor) -> torch.Tensor:
    return clips


def _build_spatial(spec: EvaluateSpec, num_classes: int) -> torch.nn.Module:
    return build_vgg16(spec.vgg_flavour, in_channels=3, num_classes=num_classes)


def _build_stacked(spec: EvaluateSpec, num_classes: int) -> torch.nn.Module:
    return build_stacked(spec.motionnet, spec.clip_len_frames, spec.vgg_flavour, num_classes)


def _build_flow_vgg(spec: EvaluateSpec, num_classes: int) -> torch.nn.Module:
    return build_temporal_vgg(spec.vgg_flavour, num_classes, flow_stack_channels(spec.clip_len_frames))


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("frames", "dataset", _frame_loader, decode_part="decode"),
        Source("flows", "tvl1_flows", _flow_loader, decode_part=None),
    )
}

STREAMS: dict[str, Stream] = {
    stream.name: stream
    for stream in (
        Stream("spatial", "spatial_weights", "frames", _build_spatial, _centre_frames, frame_conv.normalize),
        Stream("stacked", "stacked_weights", "frames", _build_stacked, _whole, frame_conv.normalize,
               fusion=Fusion("hidden_two_stream")),
        Stream("tvl1", "tvl1_weights", "flows", _build_flow_vgg, _whole, to_network_input,
               fusion=Fusion("two_stream_tvl1"), fps_name="tvl1_cached"),
    )
}


def fusions() -> dict[str, tuple[str, str]]:
    """{fused name: (first stream, second stream)} of every stream's fusion, in table order."""
    return {s.fusion.name: (s.fusion.partner, s.name) for s in STREAMS.values() if s.fusion}
