"""The stacked temporal stream: MotionNet -> FlowNormalize -> temporal VGG16, end to end.

`FinetuneMode` names the paper's three fine-tuning variants:
  (a) `frozen`: MotionNet fixed (eval, no grad), action loss only;
  (b) `action_only`: everything trainable, action loss only;
  (c) `action_plus_unsup`: everything trainable, action loss + the unsupervised
      MotionNet losses (the released setting; the loop reads `uses_unsupervised_loss`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from h2s_dist.models.limits import FinetuneMode
from h2s_dist.models.motionnet import RAW_FLOW_SCALE, MotionNet
from h2s_dist.models.vgg import VGG16

# FlowNormalize constants (the release's normalisation block).
MAX_FLOW_PX = 20.0  # flow is clamped to [-20, 20] full-resolution pixels
FLOW_TO_UINT8 = 255.0 / (2 * MAX_FLOW_PX)  # 6.375: [0, 40] -> [0, 255]
FLOW_MEAN = 128.0


def _bilinear_kernel(channels: int) -> torch.Tensor:
    """Caffe's "bilinear" filler for a 4x4, stride-2 deconvolution, one per channel."""
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    return (k1[:, None] * k1[None, :]).expand(channels, 1, 4, 4).clone()


class FlowNormalize(nn.Module):
    """Raw flow2 (B, C, h, w) -> temporal-stream input (B, C, 2h, 2w), about [-128, 127].

    x20 (full-resolution pixels) -> clamp [-20, 20] -> +20 -> x6.375 -> bilinear x2
    upsampling -> -128; so -20, 0, +20 px map to 0, 127.5, 255 before the -128, like
    the release's image-stored TV-L1 flows. Gradients pass inside the clamp, zero outside.
    No parameters.

    The upsampling is `F.interpolate(bilinear, align_corners=False)`, equal to the
    release's fixed bilinear 4/2/1 deconvolution everywhere except the outermost
    pixel ring, which the deconvolution darkens (it pads with zeros: a constant c
    becomes 0.75c at edges, 0.5625c at corners). `release_border=True` reproduces that.
    """

    def __init__(self, release_border: bool = False) -> None:
        super().__init__()
        self.release_border = release_border

    def forward(self, flow2_raw: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(flow2_raw * RAW_FLOW_SCALE, -MAX_FLOW_PX, MAX_FLOW_PX)
        x = (x + MAX_FLOW_PX) * FLOW_TO_UINT8
        if self.release_border:
            c = x.shape[1]
            kernel = _bilinear_kernel(c).to(x)
            x = F.conv_transpose2d(x, kernel, stride=2, padding=1, groups=c)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x - FLOW_MEAN


class StackedOutput(NamedTuple):
    """scores (B, num_classes) pre-softmax; flows = MotionNet's raw [flow6, ..., flow2]."""

    scores: torch.Tensor
    flows: list[torch.Tensor]


class StackedTemporalStream(nn.Module):
    """Frames (B, T, 3, H, W) normalised -> StackedOutput(scores, flows).

    MotionNet's flow2 (H/2) is normalised and upsampled to (B, 2(T-1), H, W) and
    classified by a VGG16 with 2(T-1) input channels. In `FinetuneMode.FROZEN` MotionNet
    runs in eval mode under no_grad with requires_grad False, and stays in eval
    mode when `.train()` is called on this wrapper; its flows come back detached.
    """

    def __init__(self, motionnet: MotionNet, vgg: VGG16,
                 mode: FinetuneMode | str = FinetuneMode.ACTION_PLUS_UNSUP) -> None:
        super().__init__()
        try:
            self.mode = FinetuneMode(mode)
        except ValueError:
            raise ValueError(
                f"unknown fine-tuning mode {mode!r}; choose one of {[m.value for m in FinetuneMode]}"
            ) from None
        nf = motionnet.config.flow_channels
        if vgg.config.in_channels != nf:
            raise ValueError(
                f"MotionNet predicts {nf} flow channels ({motionnet.config.num_frames} frames) "
                f"but the temporal VGG16 takes {vgg.config.in_channels}; build the VGG16 "
                f"with in_channels={nf}"
            )
        self.motionnet = motionnet
        self.flow_normalize = FlowNormalize()
        self.vgg = vgg
        if self.mode is FinetuneMode.FROZEN:
            motionnet.requires_grad_(False)
            motionnet.eval()

    @property
    def uses_unsupervised_loss(self) -> bool:
        """True only in mode (c): the loop adds MotionNet's unsupervised losses."""
        return self.mode is FinetuneMode.ACTION_PLUS_UNSUP

    def train(self, mode: bool = True) -> StackedTemporalStream:
        super().train(mode)
        if self.mode is FinetuneMode.FROZEN:
            self.motionnet.eval()  # frozen means frozen, whatever the wrapper's mode
        return self

    def forward(self, frames: torch.Tensor) -> StackedOutput:
        if self.mode is FinetuneMode.FROZEN:
            with torch.no_grad():
                flows = self.motionnet(frames)
        else:
            flows = self.motionnet(frames)
        scores = self.vgg(self.flow_normalize(flows[-1]))
        return StackedOutput(scores, flows)
