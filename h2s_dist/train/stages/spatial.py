"""Stage `train_spatial`: VGG16 on single RGB frames (the spatial stream)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from h2s_dist.data.manifest import read_classes
from h2s_dist.models import build_vgg16
from h2s_dist.train.loop import split_bias_groups
from h2s_dist.train.specs import DataSpec, Flavour, LabelSmoothing, LoopSpec, OptimSpec, ScalingSpec, Strict
from h2s_dist.train.stages.common import StreamTask, action_loss, run_training


class SpatialSpec(Strict):
    """Spatial stream training; defaults are the paper's (SGD 1e-3, /10 every 4k, 10k steps, batch 128)."""

    kind: Literal["train_spatial"] = "train_spatial"
    """Stage kind."""
    vgg_flavour: Flavour = "paper"
    """VGG16 flavour."""
    init_weights: str | None = None
    """URI of RGB VGG16 weights to start from (e.g. your ImageNet weights); layers whose
    shape differs (fc8 for another class count) stay random. Null = random init."""
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


SPEC = SpatialSpec


class SpatialTask(StreamTask):
    def __init__(self, spec: SpatialSpec):
        self.spec = spec
        self.num_classes = len(read_classes(spec.data.dataset))

    def build_model(self) -> torch.nn.Module:
        model = build_vgg16(self.spec.vgg_flavour, in_channels=3, num_classes=self.num_classes)
        if self.spec.init_weights:
            from h2s_dist.weights import load_weights

            load_weights(model, self.spec.init_weights, strict=False)
        return model

    def param_groups(self, model, optim: OptimSpec) -> list[dict[str, Any]]:
        return split_bias_groups(model.named_parameters(), optim.lr, optim.bias_lr_multiplier, "vgg")

    def loss(self, model, batch, device):
        # The stream yields (B, T, 3, H, W); the spatial stream looks at each frame alone.
        images = batch[0].to(device, non_blocking=True).flatten(0, 1)
        labels = batch[1].to(device, non_blocking=True).repeat_interleave(batch[0].shape[1])
        return action_loss(model(images), labels, self.spec.label_smoothing)

    def final_weights(self, model) -> dict[str, dict[str, torch.Tensor]]:
        return {"spatial": model.state_dict()}


def run(spec: SpatialSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    return run_training(spec, SpatialTask(spec), session, tracker, output_uri)
