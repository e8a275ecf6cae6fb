"""Stage `finetune_stacked`: MotionNet + flow normalisation + temporal VGG16, end to end.

Modes (paper section 3): `frozen` (a) trains the VGG16 on a fixed MotionNet;
`action_only` (b) trains both on the action loss; `action_plus_unsup` (c) adds
MotionNet's unsupervised loss (SSIM ladder ten times smaller) so the flow stays flow.
MotionNet and VGG16 get separate learning rates (1e-6 vs 1e-3 in the release).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from h2s_dist import frames as frame_conv
from h2s_dist.data.manifest import read_classes
from h2s_dist.losses import action_loss, unsupervised_flow_loss
from h2s_dist.models import FinetuneMode, StackedTemporalStream
from h2s_dist.train import dist
from h2s_dist.train.loop import split_bias_groups
from h2s_dist.specs.common import OptimSpec
from h2s_dist.specs.training import FinetuneSpec
from h2s_dist.train.builders import (
    build_motionnet_from,
    build_stacked,
    build_temporal_vgg,
    motionnet_param_groups,
    unsup_loss_config,
)
from h2s_dist.train.task import StreamTask, flow_picture, run_training


class FinetuneTask(StreamTask):
    def __init__(self, spec: FinetuneSpec):
        self.spec = spec
        self.num_classes = len(read_classes(spec.data.dataset))
        self.loss_config = unsup_loss_config(spec.loss, finetuning=True)

    def build_model(self) -> StackedTemporalStream:
        spec = self.spec
        if spec.init_weights:  # a whole stacked stream (HMDB51 from UCF101's): fc8 fresh if the classes differ
            return build_stacked(spec.motionnet, spec.data.clip_len_frames, spec.vgg_flavour, self.num_classes,
                                 spec.mode, weights=spec.init_weights)
        motionnet = build_motionnet_from(spec.motionnet, spec.data.clip_len_frames, spec.motionnet_weights)
        vgg = build_temporal_vgg(
            spec.vgg_flavour, self.num_classes, motionnet.config.flow_channels, spec.vgg_weights, spec.vgg_rgb_weights
        )
        return StackedTemporalStream(motionnet, vgg, spec.mode)

    def param_groups(self, model: StackedTemporalStream, optim: OptimSpec) -> list[dict[str, Any]]:
        groups = split_bias_groups(model.vgg.named_parameters(), optim.lr, optim.bias_lr_multiplier, "vgg")
        if self.spec.mode is not FinetuneMode.FROZEN:
            groups += motionnet_param_groups(model.motionnet, self.spec.motionnet_lr, optim.bias_lr_multiplier)
        return groups

    def loss(self, model, batch, device):
        clips, labels = self.network_input(batch[0], device), batch[1].to(device, non_blocking=True)
        out = model(clips)
        total, terms = action_loss(out.scores, labels, self.spec.label_smoothing)
        if dist.unwrap(model).uses_unsupervised_loss and self.spec.unsup_weight > 0:
            backward = None
            if self.loss_config.occlusion == "forward_backward":
                with torch.no_grad():  # the flows of the time-reversed clip only shape the occlusion mask
                    backward = dist.unwrap(model).motionnet(clips.flip(1))
            unsup, parts = unsupervised_flow_loss(frame_conv.denormalize(clips), out.flows, self.loss_config, backward)
            total = total + self.spec.unsup_weight * unsup
            terms.update({f"loss/{k}": v for k, v in parts.items() if "/" not in k})  # detached, on the device
        terms["loss/total"] = total.detach()
        return total, terms

    def pictures(self, model, batch, device) -> dict[str, np.ndarray]:
        clips = self.network_input(batch[0][:1], device)
        out = model(clips)
        return {"flows": flow_picture(clips[0], out.flows[-1][0])}

    def final_weights(self, model) -> dict[str, dict[str, torch.Tensor]]:
        return {"stacked_temporal": model.state_dict()}


def run(spec: FinetuneSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    return run_training(spec, FinetuneTask(spec), session, tracker, output_uri)
