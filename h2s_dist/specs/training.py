"""Specs of the training stages: MotionNet pretraining, stacked fine-tuning, the spatial
stream and the TV-L1 baseline's temporal stream. Pure pydantic (no torch).

What the networks accept (crop sizes, clip lengths) is checked here by the pure functions
of h2s_dist.models.limits, so a bad spec fails at `h2s validate`, not minutes later on
the workers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from h2s_dist.models.limits import FinetuneMode, flow_stack_problems, motionnet_problems, vgg_problems
from h2s_dist.specs.common import (
    DataSpec,
    Flavour,
    LabelSmoothing,
    LoopSpec,
    MotionNetSpec,
    OptimSpec,
    PositiveFloat,
    PositiveInt,
    ScalingSpec,
    Strict,
    UnsupLossSpec,
    raise_problems,
)


def _at(path: str, messages: list[str]) -> list[tuple[str, str]]:
    return [(path, message) for message in messages]


class FlowValidationSpec(Strict):
    """MotionNet's end-point error on pairs with ground-truth flow, logged as `val/epe` (the mean
    over sets) and `val/epe/<set>` while pretraining: the loss cannot be compared across loss
    weights, flow error can (a Tune stage may rank trials by `val/epe`)."""

    every_steps: PositiveInt = 1000
    """Steps between validations; also at the first log step and at the last step."""
    synthetic_pairs: int = Field(16, ge=0)
    """Pairs of the synthetic motion set with exact flow, each inside its real clip (0 = none)."""
    synthetic_size: tuple[PositiveInt, PositiveInt] = (64, 64)
    """(width, height) of the synthetic pairs."""
    flow_dev: str | None = None
    """Local folder of a flow dev set with ground truth (flyingchairs/, kitti/, yosemite/, as in
    ../shared/data/flow_dev); its bare pairs are scored with frame2 repeated to the clip length.
    Null = none."""
    max_side: PositiveInt | None = 256
    """Dev-set pairs are resized so their longer side is at most this (their flow scaled with
    them, EPE in the resized pixels); null = full size."""

    @model_validator(mode="after")
    def _some_pairs(self) -> FlowValidationSpec:
        if not self.synthetic_pairs and not self.flow_dev:
            raise ValueError("validation needs synthetic_pairs > 0 or a flow_dev folder (or set validation: null)")
        return self


class PretrainSpec(Strict):
    """MotionNet pretraining; defaults are the paper's (Adam 3.2e-5, 400k steps, batch 16)."""

    kind: Literal["pretrain_motionnet"] = "pretrain_motionnet"
    """Stage kind."""
    motionnet: MotionNetSpec = MotionNetSpec()
    """The network to train."""
    loss: UnsupLossSpec = UnsupLossSpec()
    """Weights of the unsupervised loss terms."""
    data: DataSpec
    """Videos to learn from (labels ignored)."""
    optim: OptimSpec = OptimSpec(
        name="adam", lr=3.2e-5, weight_decay=4e-4, milestones=[100_000, 200_000, 250_000, 300_000, 350_000], gamma=0.5
    )
    """Adam, learning rate halved at the paper's milestones."""
    loop: LoopSpec = LoopSpec(max_steps=400_000, checkpoint_every_steps=5000, picture_every_steps=2000)
    """Step budget and logging cadence."""
    scaling: ScalingSpec = ScalingSpec()
    """Workers and resources."""
    init_weights: str | None = Field(None)
    """URI of MotionNet weights to start from (random MSRA init when null)."""
    validation: FlowValidationSpec | None = FlowValidationSpec()
    """Flow error on ground-truth pairs during training (`val/epe`); null = none."""
    proxy_flows: str | None = None
    """URI of a flow dataset of the same videos at the frames' size (a tvl1_flows stage's `flows`
    with `size: null`), read alongside the frames (same window, crop and flip) as the proxy of
    `loss.proxy_weight` (paper Table 4). Null = none."""

    @model_validator(mode="after")
    def _motionnet_accepts_the_clips(self) -> PretrainSpec:
        problems = _at("data.crop_size", motionnet_problems(self.data.crop_size, self.data.clip_len_frames))
        if self.loss.proxy_weight > 0 and not self.proxy_flows:
            problems.append(("proxy_flows", "loss.proxy_weight > 0 needs the proxy: a flow dataset (${tvl1.flows})"))
        if self.proxy_flows and self.loss.proxy_weight == 0:
            problems.append(("loss.proxy_weight", "proxy_flows is read only with loss.proxy_weight > 0"))
        raise_problems(problems)
        return self


class FinetuneSpec(Strict):
    """Stacked temporal stream fine-tuning; defaults are the release's UCF101 recipe."""

    kind: Literal["finetune_stacked"] = "finetune_stacked"
    """Stage kind."""
    mode: FinetuneMode = FinetuneMode.ACTION_PLUS_UNSUP
    """frozen (a), action_only (b) or action_plus_unsup (c)."""
    motionnet: MotionNetSpec = MotionNetSpec()
    """MotionNet architecture (must match its weights)."""
    motionnet_weights: str | None = None
    """URI of pretrained MotionNet weights (the pretrain stage's output); null = random."""
    vgg_flavour: Flavour = "paper"
    """Temporal VGG16 flavour."""
    vgg_weights: str | None = None
    """URI of temporal VGG16 weights to start from: the paper's start, a temporal stream trained on
    TV-L1 flow (`${temporal_tvl1.tvl1_temporal}`); fc8 is re-initialised when their class count differs."""
    vgg_rgb_weights: str | None = None
    """URI of RGB VGG16 weights (e.g. ImageNet) turned into a 20-channel VGG16 by cross-modality init."""
    init_weights: str | None = None
    """URI (or `models:/NAME/VERSION`) of a whole stacked temporal stream to start from, MotionNet and
    VGG16: a finetune stage's `stacked_temporal`, e.g. UCF101's for HMDB51 (the paper). fc8 is
    re-initialised when its class count differs (101 -> 51). Excludes the three fields above."""
    motionnet_lr: PositiveFloat = 1e-6
    """MotionNet's learning rate (the VGG16's is optim.lr)."""
    unsup_weight: float = Field(1.0, ge=0)
    """Multiplier of the unsupervised loss in mode (c)."""
    label_smoothing: LabelSmoothing = 0.0
    """Cross-entropy label smoothing (0 = none, the paper)."""
    loss: UnsupLossSpec = UnsupLossSpec()
    """Unsupervised loss terms (mode c); the SSIM ladder is scaled by 0.1 for fine-tuning."""
    data: DataSpec = Field(default_factory=lambda: DataSpec(dataset="", batch_size=8))
    """Labeled videos (a split's train side)."""
    optim: OptimSpec = OptimSpec(
        name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, bias_lr_multiplier=2.0, milestones=[5000, 9500]
    )
    """SGD with step decay (x0.1 at 5000 and 9500 of 16000 for UCF101)."""
    loop: LoopSpec = LoopSpec(max_steps=16_000, grad_accum_steps=16, checkpoint_every_steps=1000)
    """16k steps of 8 clips x 16 accumulated (effective batch 128)."""
    scaling: ScalingSpec = ScalingSpec()
    """Workers and resources."""

    @model_validator(mode="after")
    def _networks_accept_the_clips(self) -> FinetuneSpec:
        if self.loss.proxy_weight:
            raise ValueError("loss.proxy_weight is a pretraining term (pretrain_motionnet with proxy_flows); "
                             "set it to 0 here")
        if self.init_weights and (self.motionnet_weights or self.vgg_weights or self.vgg_rgb_weights):
            raise ValueError("init_weights (a whole stacked stream) excludes motionnet_weights, vgg_weights and "
                             "vgg_rgb_weights: give either the whole stream or its parts")
        data = self.data
        raise_problems(_at("data.crop_size", motionnet_problems(data.crop_size, data.clip_len_frames)
                           + vgg_problems(data.crop_size)))
        return self


class SpatialSpec(Strict):
    """Spatial stream training; defaults are the paper's (SGD 1e-3, /10 every 4k, 10k steps, batch 128)."""

    kind: Literal["train_spatial"] = "train_spatial"
    """Stage kind."""
    vgg_flavour: Flavour = "paper"
    """VGG16 flavour."""
    init_weights: str | None = None
    """URI (or `models:/NAME/VERSION`) of RGB VGG16 weights to start from: your ImageNet weights, or
    UCF101's spatial stream for HMDB51 (the paper). fc8 stays at its init when the class count
    differs; every other tensor must fit. Null = random init."""
    data: DataSpec = Field(default_factory=lambda: DataSpec(dataset="", batch_size=128, clip_len_frames=1))
    """Labeled videos; one random frame per sample (clip_len_frames 1)."""
    optim: OptimSpec = OptimSpec(name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, milestones=[4000, 8000])
    """SGD, learning rate /10 every 4k steps."""
    loop: LoopSpec = LoopSpec(max_steps=10_000, checkpoint_every_steps=1000)
    """Step budget."""
    label_smoothing: LabelSmoothing = 0.0
    """Cross-entropy label smoothing (0 = none, the paper). A stream that can memorise its
    training videos without learning the classes (the spatial stream on the synthetic set)
    is otherwise confidently wrong on test videos, and that confidence survives late fusion."""
    scaling: ScalingSpec = ScalingSpec()
    """Workers and resources."""

    @model_validator(mode="after")
    def _vgg_accepts_the_crops(self) -> SpatialSpec:
        raise_problems(_at("data.crop_size", vgg_problems(self.data.crop_size)))
        return self


class TemporalFlowsSpec(Strict):
    """Temporal VGG16 on precomputed TV-L1 flows."""

    kind: Literal["train_temporal_flows"] = "train_temporal_flows"
    """Stage kind."""
    flows: str
    """URI of a flow dataset (the tvl1_flows stage's `flows` output)."""
    vgg_flavour: Flavour = "paper"
    """Temporal VGG16 flavour."""
    vgg_weights: str | None = None
    """URI of temporal VGG16 weights to start from; wins over vgg_rgb_weights."""
    vgg_rgb_weights: str | None = None
    """URI of RGB VGG16 weights (e.g. ImageNet) turned into a 20-channel VGG16 by cross-modality init."""
    data: DataSpec = Field(default_factory=lambda: DataSpec(dataset="", batch_size=32))
    """Clip length, crop, batch, loader; `data.dataset` stays empty (`flows` says where to read)."""
    optim: OptimSpec = OptimSpec(
        name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, bias_lr_multiplier=2.0, milestones=[5000, 9500]
    )
    """SGD with step decay, as the stacked stream's VGG16."""
    loop: LoopSpec = LoopSpec(max_steps=16_000, grad_accum_steps=4, checkpoint_every_steps=1000)
    """16k steps of 32 clips x 4 accumulated (effective batch 128)."""
    label_smoothing: LabelSmoothing = 0.0
    """Cross-entropy label smoothing (0 = none, the paper)."""
    scaling: ScalingSpec = ScalingSpec()
    """Workers and resources."""

    @model_validator(mode="after")
    def _one_dataset(self) -> TemporalFlowsSpec:
        if self.data.dataset not in ("", self.flows):
            raise ValueError("data.dataset must stay empty: this stage reads the flow dataset named by `flows`")
        raise_problems(_at("data.clip_len_frames", flow_stack_problems(self.data.clip_len_frames))
                       + _at("data.crop_size", vgg_problems(self.data.crop_size)))
        return self
