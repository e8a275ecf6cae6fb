"""Specs -> the torch objects a stage trains or scores: networks and loss configs.

The one room where spec fields meet model and loss constructors, so that every stage
(pretrain, finetune, temporal_flows, evaluate) builds MotionNet, the VGG16s and the
unsupervised loss the same way, and no stage imports another.
"""

from __future__ import annotations

import dataclasses

import torch

from h2s_dist.losses import UnsupervisedLossConfig
from h2s_dist.models import StackedTemporalStream, VGG16_CLASSIFIER, build_motionnet, build_vgg16, temporal_from_rgb
from h2s_dist.models.limits import FinetuneMode
from h2s_dist.specs.common import MotionNetSpec, UnsupLossSpec


def unsup_loss_config(loss: UnsupLossSpec, *, finetuning: bool) -> UnsupervisedLossConfig:
    """The pure-torch loss config from the spec: the release's fine-tuning constants (SSIM
    ladder ten times smaller, batch 8) when `finetuning`, its pretraining ones otherwise."""
    base = UnsupervisedLossConfig.finetuning() if finetuning else UnsupervisedLossConfig.pretraining()
    return dataclasses.replace(
        base,
        pixel_alpha=loss.pixel_alpha,
        pixel_level_weights=tuple(loss.pixel_weight for _ in base.pixel_level_weights),
        smoothness_alpha=loss.smoothness_alpha,
        smoothness_weight=loss.smoothness_weight,
        ssim_weight_scale=base.ssim_weight_scale * loss.ssim_weight_scale,
        use_lrn=loss.use_lrn,
        normalisation=loss.normalisation,
        reference_batch_size=loss.reference_batch_size or base.reference_batch_size,
        reference_num_frames=loss.reference_num_frames or base.reference_num_frames,
        photometric=loss.photometric,
        smoothness=loss.smoothness,
        edge_weight=loss.edge_weight,
        occlusion=loss.occlusion,
    )


def build_motionnet_from(spec: MotionNetSpec, num_frames: int, weights: str | None = None) -> torch.nn.Module:
    """MotionNet as `spec` describes it, for clips of `num_frames`; `weights` (a URI) loaded when given."""
    # Unset fields keep the flavour's own value (build_motionnet applies overrides only).
    head_std = spec.flow_head_init_std
    overrides = {} if head_std is None else {"flow_head_init_std": None if head_std == "msra" else head_std}
    model = build_motionnet(
        spec.flavour,
        num_frames=num_frames,
        small_displacement=spec.small_displacement,
        conv_between_deconv=spec.conv_between_deconv,
        **overrides,
    )
    if weights:
        from h2s_dist.weights import load_weights

        load_weights(model, weights)
    return model


def build_temporal_vgg(flavour: str, num_classes: int, in_channels: int, weights: str | None = None,
                       rgb_weights: str | None = None) -> torch.nn.Module:
    """A VGG16 on `in_channels` stacked flow channels: from temporal `weights` (fc8 re-initialised
    when they were trained on another class count), else from RGB weights by cross-modality
    initialisation, else random."""
    from h2s_dist.weights import load_state_dict, load_weights

    vgg = build_vgg16(flavour, in_channels=in_channels, num_classes=num_classes)
    if weights:
        load_weights(vgg, weights, new_head=VGG16_CLASSIFIER)
    elif rgb_weights:
        converted = temporal_from_rgb(load_state_dict(rgb_weights), in_channels, vgg.state_dict())
        vgg.load_state_dict(converted, strict=False)
    return vgg


def flow_stack_channels(clip_len_frames: int) -> int:
    """Input channels of a temporal VGG16 on the flows of one clip: u and v of each frame pair."""
    return 2 * (clip_len_frames - 1)


def build_stacked(motionnet: MotionNetSpec, clip_len_frames: int, vgg_flavour: str, num_classes: int,
                  mode: FinetuneMode | str = FinetuneMode.ACTION_ONLY, weights: str | None = None) -> StackedTemporalStream:
    """MotionNet -> flow normalisation -> temporal VGG16, randomly initialised, or from a whole
    stacked stream's `weights` (URI); a classifier trained on another class count (UCF101's
    model starting HMDB51's) is left at its init."""
    net = build_motionnet_from(motionnet, clip_len_frames)
    vgg = build_vgg16(vgg_flavour, in_channels=net.config.flow_channels, num_classes=num_classes)
    stream = StackedTemporalStream(net, vgg, mode)
    if weights:
        from h2s_dist.weights import load_weights

        load_weights(stream, weights, new_head=STACKED_CLASSIFIER)
    return stream


STACKED_CLASSIFIER = tuple(f"vgg.{name}" for name in VGG16_CLASSIFIER)


def motionnet_param_groups(motionnet, lr: float, bias_mult: float, tag: str = "motionnet") -> list[dict]:
    """MotionNet's optimiser groups as the release trains it: weights at `lr`, biases at
    `lr * bias_mult`, and the deconv and flow-upsample weights at `lr` without weight decay
    (decay_mult 0); the deconv and upsample biases are frozen at 0 (`requires_grad` False) and
    in no group."""
    from h2s_dist.train.loop import split_bias_groups

    no_decay = set(motionnet.no_weight_decay_names())
    named = list(motionnet.named_parameters())
    groups = split_bias_groups([(n, p) for n, p in named if n not in no_decay], lr, bias_mult, tag)
    decayless = [p for n, p in named if n in no_decay and p.requires_grad]
    if decayless:
        groups.append({"params": decayless, "lr": lr, "weight_decay": 0.0, "name": f"{tag}.deconv_weight"})
    return groups
