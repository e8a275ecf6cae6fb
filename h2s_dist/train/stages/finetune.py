"""Stage `finetune_stacked`: MotionNet + flow normalisation + temporal VGG16, end to end.

Modes (paper section 3): `frozen` (a) trains the VGG16 on a fixed MotionNet;
`action_only` (b) trains both on the action loss; `action_plus_unsup` (c) adds
MotionNet's unsupervised loss (SSIM ladder ten times smaller) so the flow stays flow.
MotionNet and VGG16 get separate learning rates (1e-6 vs 1e-3 in the release).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from h2s_dist import frames as frame_conv
from h2s_dist.data.manifest import read_classes
from h2s_dist.losses import unsupervised_flow_loss
from h2s_dist.models import FinetuneMode, StackedTemporalStream, build_vgg16, temporal_from_rgb
from h2s_dist.train import dist
from h2s_dist.train.loop import split_bias_groups
from h2s_dist.train.specs import (
    DataSpec,
    Flavour,
    LabelSmoothing,
    LoopSpec,
    MotionNetSpec,
    OptimSpec,
    PositiveFloat,
    ScalingSpec,
    Strict,
    UnsupLossSpec,
)
from h2s_dist.train.stages.common import StreamTask, action_loss, flow_picture, run_training
from h2s_dist.train.stages.pretrain import build_motionnet_from, unsup_loss_config


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
    """URI of temporal VGG16 weights to start from (e.g. a TV-L1 temporal stream)."""
    vgg_rgb_weights: str | None = None
    """URI of RGB VGG16 weights (e.g. ImageNet) turned into a 20-channel VGG16 by cross-modality init."""
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


SPEC = FinetuneSpec


def build_temporal_vgg(flavour: str, num_classes: int, in_channels: int, weights: str | None, rgb_weights: str | None):
    from h2s_dist.weights import load_state_dict, load_weights

    vgg = build_vgg16(flavour, in_channels=in_channels, num_classes=num_classes)
    if weights:
        load_weights(vgg, weights)
    elif rgb_weights:
        converted = temporal_from_rgb(load_state_dict(rgb_weights), in_channels, vgg.state_dict())
        vgg.load_state_dict(converted, strict=False)
    return vgg


class FinetuneTask(StreamTask):
    def __init__(self, spec: FinetuneSpec):
        self.spec = spec
        self.num_classes = len(read_classes(spec.data.dataset))
        self.loss_config = unsup_loss_config(spec.loss, finetuning=True)

    def build_model(self) -> StackedTemporalStream:
        from h2s_dist.weights import load_weights

        spec = self.spec
        motionnet = build_motionnet_from(spec.motionnet, spec.data.clip_len_frames)
        if spec.motionnet_weights:
            load_weights(motionnet, spec.motionnet_weights)
        vgg = build_temporal_vgg(
            spec.vgg_flavour, self.num_classes, motionnet.config.flow_channels, spec.vgg_weights, spec.vgg_rgb_weights
        )
        return StackedTemporalStream(motionnet, vgg, spec.mode)

    def param_groups(self, model: StackedTemporalStream, optim: OptimSpec) -> list[dict[str, Any]]:
        groups = split_bias_groups(model.vgg.named_parameters(), optim.lr, optim.bias_lr_multiplier, "vgg")
        if self.spec.mode is not FinetuneMode.FROZEN:
            groups += split_bias_groups(
                model.motionnet.named_parameters(), self.spec.motionnet_lr, optim.bias_lr_multiplier, "motionnet"
            )
        return groups

    def loss(self, model, batch, device):
        clips, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        out = model(clips)
        total, terms = action_loss(out.scores, labels, self.spec.label_smoothing)
        if dist.unwrap(model).uses_unsupervised_loss and self.spec.unsup_weight > 0:
            unsup, parts = unsupervised_flow_loss(
                frame_conv.denormalize(clips), [f.float() for f in out.flows], self.loss_config
            )
            total = total + self.spec.unsup_weight * unsup
            terms.update({f"loss/{k}": float(v) for k, v in parts.items() if "/" not in k})
        terms["loss/total"] = float(total.detach())
        return total, terms

    def pictures(self, model, batch, device) -> dict[str, np.ndarray]:
        clips = batch[0][:1].to(device)
        out = model(clips)
        return {"flows": flow_picture(clips[0], out.flows[-1][0])}

    def final_weights(self, model) -> dict[str, dict[str, torch.Tensor]]:
        return {"stacked_temporal": model.state_dict()}


def run(spec: FinetuneSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    return run_training(spec, FinetuneTask(spec), session, tracker, output_uri)
