"""Stage `train_spatial`: VGG16 on single RGB frames (the spatial stream)."""

from __future__ import annotations

from typing import Any

import torch

from h2s_dist.data.manifest import read_classes
from h2s_dist.losses import action_loss
from h2s_dist.models import build_vgg16
from h2s_dist.train.loop import split_bias_groups
from h2s_dist.specs.common import OptimSpec
from h2s_dist.specs.training import SpatialSpec
from h2s_dist.train.task import StreamTask, run_training


class SpatialTask(StreamTask):
    def __init__(self, spec: SpatialSpec):
        self.spec = spec
        self.num_classes = len(read_classes(spec.data.dataset))

    def build_model(self) -> torch.nn.Module:
        model = build_vgg16(self.spec.vgg_flavour, in_channels=3, num_classes=self.num_classes)
        if self.spec.init_weights:  # ImageNet's 1000 or UCF101's 101 classes: fc8 stays at its init
            from h2s_dist.models import VGG16_CLASSIFIER
            from h2s_dist.weights import load_weights

            load_weights(model, self.spec.init_weights, new_head=VGG16_CLASSIFIER)
        return model

    def param_groups(self, model, optim: OptimSpec) -> list[dict[str, Any]]:
        return split_bias_groups(model.named_parameters(), optim.lr, optim.bias_lr_multiplier, "vgg")

    def loss(self, model, batch, device):
        # The stream yields (B, T, 3, H, W); the spatial stream looks at each frame alone.
        images = self.network_input(batch[0], device).flatten(0, 1)
        labels = batch[1].to(device, non_blocking=True).repeat_interleave(batch[0].shape[1])
        return action_loss(model(images), labels, self.spec.label_smoothing)

    def final_weights(self, model) -> dict[str, dict[str, torch.Tensor]]:
        return {"spatial": model.state_dict()}


def run(spec: SpatialSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    return run_training(spec, SpatialTask(spec), session, tracker, output_uri)
