"""Stage `pretrain_motionnet`: MotionNet learns optical flow without labels.

The loss is the paper's multi-scale unsupervised loss (photometric Charbonnier +
smoothness + SSIM) of each frame rebuilt by warping its successor. Any ingested dataset
works, labeled or not: labels are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from h2s_dist import frames as frame_conv
from h2s_dist.losses import UnsupervisedLossConfig, unsupervised_flow_loss
from h2s_dist.models import build_motionnet
from h2s_dist.train.loop import split_bias_groups
from h2s_dist.train.specs import DataSpec, LoopSpec, MotionNetSpec, OptimSpec, ScalingSpec, Strict, UnsupLossSpec
from h2s_dist.train.stages.common import StreamTask, flow_picture, run_training


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


SPEC = PretrainSpec


def unsup_loss_config(loss: UnsupLossSpec, *, finetuning: bool) -> UnsupervisedLossConfig:
    """The pure-torch loss config from the spec (SSIM ladder ten times smaller when fine-tuning)."""
    base = UnsupervisedLossConfig.finetuning() if finetuning else UnsupervisedLossConfig.pretraining()
    return UnsupervisedLossConfig(
        pixel_alpha=loss.pixel_alpha,
        pixel_level_weights=tuple(loss.pixel_weight for _ in base.pixel_level_weights),
        smoothness_alpha=loss.smooth_alpha,
        smoothness_weight=loss.smoothness_weight,
        ssim_level_weights=base.ssim_level_weights,
        ssim_weight_scale=base.ssim_weight_scale * loss.ssim_weight_scale,
        use_lrn=loss.use_lrn,
    )


def build_motionnet_from(spec: MotionNetSpec, num_frames: int) -> torch.nn.Module:
    # Unset fields keep the flavour's own value (build_motionnet applies overrides only).
    head_std = spec.flow_head_init_std
    overrides = {} if head_std is None else {"flow_head_init_std": None if head_std == "msra" else head_std}
    return build_motionnet(
        spec.flavour,
        num_frames=num_frames,
        small_displacement=spec.small_displacement,
        conv_between_deconv=spec.conv_between_deconv,
        **overrides,
    )


class PretrainTask(StreamTask):
    labeled = False  # MotionNet learns from any video

    def __init__(self, spec: PretrainSpec):
        self.spec = spec
        self.loss_config = unsup_loss_config(spec.loss, finetuning=False)

    def build_model(self) -> torch.nn.Module:
        model = build_motionnet_from(self.spec.motionnet, self.spec.data.clip_len_frames)
        if self.spec.init_weights:
            from h2s_dist.weights import load_weights

            load_weights(model, self.spec.init_weights)
        return model

    def param_groups(self, model, optim: OptimSpec) -> list[dict[str, Any]]:
        return split_bias_groups(model.named_parameters(), optim.lr, optim.bias_lr_multiplier, "motionnet")

    def loss(self, model, batch, device):
        clips = batch[0].to(device, non_blocking=True)
        flows = model(clips)
        total, terms = unsupervised_flow_loss(frame_conv.denormalize(clips), [f.float() for f in flows], self.loss_config)
        logged = {f"loss/{name}": float(value) for name, value in terms.items()}
        logged["loss/total"] = float(total.detach())
        return total, logged

    def pictures(self, model, batch, device) -> dict[str, np.ndarray]:
        clips = batch[0][:1].to(device)
        flows = model(clips)
        return {"flows": flow_picture(clips[0], flows[-1][0])}

    def final_weights(self, model) -> dict[str, dict[str, torch.Tensor]]:
        return {"motionnet": model.state_dict()}


def run(spec: PretrainSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    return run_training(spec, PretrainTask(spec), session, tracker, output_uri)
