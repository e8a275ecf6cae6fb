"""Spec of the `evaluate` stage: the paper's test protocol over every trained stream. Pure pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from h2s_dist.models.limits import motionnet_problems, vgg_problems
from h2s_dist.specs.common import Flavour, MotionNetSpec, PositiveInt, ScalingSpec, Strict, raise_problems


class EvaluateSpec(Strict):
    """Test-protocol evaluation of the trained streams and their fusion."""

    kind: Literal["evaluate"] = "evaluate"
    """Stage kind."""
    dataset: str
    """URI of the ingested frame dataset."""
    split: int | None = Field(1, ge=1, le=3)
    """Official split whose test side is evaluated."""
    subset: Literal["train", "test"] | None = "test"
    """Side of the split to evaluate."""
    clip_len_frames: int = Field(11, ge=2)
    """Frames per window (must match the stacked stream's MotionNet)."""
    crop_size: PositiveInt = 224
    """Crop side."""
    num_windows: PositiveInt = 25
    """Windows per video, evenly spaced."""
    num_crops: Literal[1, 5, 10] = 10
    """Crops per window: 10 = four corners and centre, each also flipped."""
    spatial_weights: str | None = None
    """URI of the spatial VGG16 weights (train_spatial's output); null skips the stream."""
    stacked_weights: str | None = None
    """URI of the stacked temporal stream weights (finetune_stacked's output); null skips it."""
    tvl1_weights: str | None = None
    """URI of the TV-L1 temporal VGG16 weights (train_temporal_flows' output); null skips it."""
    tvl1_flows: str | None = None
    """URI of the cached TV-L1 flow dataset covering the evaluated videos (tvl1_flows' output)."""
    tvl1_timed_videos: int = Field(2, ge=0)
    """Videos on which the two-stage baseline is also run end to end (decode, TV-L1 on the
    fly, temporal VGG16) to measure its frames per second; its accuracy uses the cache."""
    motionnet: MotionNetSpec = MotionNetSpec()
    """MotionNet architecture inside the stacked weights."""
    vgg_flavour: Flavour = "paper"
    """VGG16 flavour of every stream."""
    fusion_weights: tuple[float, float] = (1.0, 1.5)
    """Spatial : temporal weights of late fusion."""
    fusion_rule: Literal["release", "weighted_sum"] = "release"
    """Headline fusion rule: `release` (softmax, clamp, L1-normalise, weighted sum) or
    `weighted_sum` of pre-softmax scores. Both are logged."""
    inputs_per_forward: PositiveInt = 50
    """Inputs per network forward (lower it when memory is short)."""
    loader_workers: int = Field(1, ge=0)
    """DataLoader processes decoding test videos."""
    bf16: bool = False
    """bf16 autocast for the forward passes."""
    scaling: ScalingSpec = ScalingSpec()
    """Workers: videos are split across them."""

    @model_validator(mode="after")
    def _networks_accept_the_inputs(self) -> EvaluateSpec:
        problems = []
        if self.stacked_weights:
            problems += motionnet_problems(self.crop_size, self.clip_len_frames)
        if self.spatial_weights or self.stacked_weights or self.tvl1_weights:
            problems += vgg_problems(self.crop_size)
        raise_problems([("crop_size", message) for message in problems])
        return self
