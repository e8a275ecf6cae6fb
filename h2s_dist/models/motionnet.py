"""MotionNet: the unsupervised multi-frame optical-flow network (paper Table 1, top).

An encoder of 3x3 convolutions (the "small-displacement" design) and a FlowNet-style
decoder that predicts flow at five scales. Layer names follow the release prototxt
(conv1 ... conv6_1, deconvK, upsample_flowK1toK, xconvK = the release's smooth_convK,
predict_flowK), so a converted Caffe checkpoint maps onto the state dict by name
(note: our frames are RGB where the release fed BGR; swap conv1's input channels).

Flow conventions (shared with `h2s_dist.warp` and `h2s_dist.losses`):
  - For T input frames the network predicts T-1 flows on 2*(T-1) channels laid out
    u0, v0, u1, v1, ...; flow i maps frame i to frame i+1 in the backward-warping
    sense: frame i+1 sampled at (x + u_i, y + v_i) reconstructs frame i.
    u points right (+x, columns), v points down (+y, rows).
  - Raw outputs are flow / RAW_FLOW_SCALE (= 20) in *full-resolution* pixels at every
    level. To get pixels at a level's own resolution multiply by LEVEL_MULTIPLIERS
    (= 20 / stride): flow6 x0.625, flow5 x1.25, flow4 x2.5, flow3 x5, flow2 x10.

Run `python bench/models.py --quick` for sizes and timings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from h2s_dist.models.limits import MOTIONNET_SIZE_MULTIPLE

# Raw network outputs are flow / RAW_FLOW_SCALE in full-resolution pixels. Kept here as
# well as in h2s_dist.warp so that the models import nothing but torch.
RAW_FLOW_SCALE = 20.0
# Output strides of flow6 ... flow2 relative to the input (coarsest first).
LEVEL_STRIDES = (32, 16, 8, 4, 2)
# raw -> pixels at the level's own resolution: RAW_FLOW_SCALE / stride.
LEVEL_MULTIPLIERS = tuple(RAW_FLOW_SCALE / s for s in LEVEL_STRIDES)  # (0.625, ..., 10.0)
# H and W must be multiples of this (the reason is in limits.py, which validation reads).
SIZE_MULTIPLE = MOTIONNET_SIZE_MULTIPLE
# Decoder levels K, coarse to fine (flowK is predicted at stride 2**(K-1)).
_DECODER_LEVELS = (5, 4, 3, 2)


@dataclass(frozen=True)
class MotionNetConfig:
    """Shape of a MotionNet. `paper()` is Table 1; `small()` and `tiny()` keep the topology, narrower."""

    encoder_channels: tuple[int, ...] = (64, 128, 256, 512, 512, 1024)
    """Output channels of conv1 ... conv6; each convK_1 keeps convK's width."""
    decoder_channels: tuple[int, ...] = (512, 256, 128, 64)
    """Output channels of deconvK and xconvK for K = 5, 4, 3, 2."""
    num_frames: int = 11
    """Frames per clip T; the network predicts T-1 flows (2*(T-1) channels)."""
    small_displacement: bool = True
    """True: 3x3 kernels, conv1 at stride 1, extra conv1_1/conv2_1 (the paper's design).
    False (Table 3 ablation): FlowNetS's front end, conv1 7x7 stride 2, conv2 5x5,
    conv3 5x5, no conv1_1/conv2_1. conv2 keeps stride 1 (FlowNetS has 2) so every
    output keeps its resolution and the decoder is unchanged."""
    conv_between_deconv: bool = True
    """True: an xconvK 3x3 convolution (no activation) after each decoder concat, feeding
    predict_flowK and the next deconv. False (ablation): both read the concat directly."""
    negative_slope: float = 0.1
    """LeakyReLU slope after every encoder conv and every deconvK."""
    flow_head_init_std: float | None = None
    """Std of the normal init of the predict_flowK weights; None = MSRA like every other
    layer (the release). MSRA heads start at flows of 5-10 px of noise, and a network
    with a few hundred steps spends them collapsing to zero flow and then stays there
    (the photometric gradient of a smooth image is weak); a small std (1e-3) starts at
    about zero flow, where that gradient points the right way from the first step."""

    def __post_init__(self) -> None:
        if len(self.encoder_channels) != 6 or len(self.decoder_channels) != 4:
            raise ValueError(
                "MotionNetConfig needs 6 encoder_channels (conv1..conv6) and 4 "
                f"decoder_channels (levels 5..2); got {self.encoder_channels} and "
                f"{self.decoder_channels}"
            )
        if min(self.encoder_channels + self.decoder_channels) < 1:
            raise ValueError("MotionNetConfig channel widths must be positive")
        if self.flow_head_init_std is not None and self.flow_head_init_std < 0:
            raise ValueError(f"flow_head_init_std must be >= 0 or None, got {self.flow_head_init_std}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 to predict a flow, got {self.num_frames}")

    @classmethod
    def paper(cls, **overrides) -> MotionNetConfig:
        """Table 1: widths 64 ... 1024, 11 frames (42.3M parameters)."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def small(cls, **overrides) -> MotionNetConfig:
        """Same topology with widths 32 ... 192, between tiny and paper, sized for pretraining on
        real video within about 30 CPU minutes; flow heads start near zero flow, as tiny's.

        2.57M parameters (tiny 0.52M, paper 42.3M). Forward + backward of one 11-frame 128x128
        clip, 1 thread of the 2-core dev machine's AMD EPYC: ~0.18 s of CPU time (tiny ~0.04 s,
        paper ~1.1 s): about 2,000 Adam steps of 4 such clips in 30 minutes (a budget; what EPE
        it reaches there is for bench/flow_quality.py to say)."""
        base = cls(encoder_channels=(32, 64, 96, 128, 128, 192), decoder_channels=(128, 64, 48, 32),
                   flow_head_init_std=1e-3)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def tiny(cls, **overrides) -> MotionNetConfig:
        """Same topology with widths 8 ... 64, for unit tests and the CPU quickstart; flow
        heads start near zero flow (its few hundred steps cannot afford MSRA's noisy start)."""
        base = cls(encoder_channels=(8, 16, 32, 64, 64, 64), decoder_channels=(64, 32, 16, 8),
                   flow_head_init_std=1e-3)
        return dataclasses.replace(base, **overrides)

    @property
    def in_channels(self) -> int:
        """Input channels: T RGB frames stacked, 3*T."""
        return 3 * self.num_frames

    @property
    def flow_channels(self) -> int:
        """Output channels per level: (u, v) for each of the T-1 flows."""
        return 2 * (self.num_frames - 1)


def _encoder_layers(cfg: MotionNetConfig) -> list[tuple[str, int, int, int, int]]:
    """(name, in, out, kernel, stride) for the encoder, input to bottleneck."""
    c1, c2, c3, c4, c5, c6 = cfg.encoder_channels
    if cfg.small_displacement:
        front = [("conv1", cfg.in_channels, c1, 3, 1), ("conv1_1", c1, c1, 3, 1),
                 ("conv2", c1, c2, 3, 2), ("conv2_1", c2, c2, 3, 1),
                 ("conv3", c2, c3, 3, 2)]
    else:
        front = [("conv1", cfg.in_channels, c1, 7, 2), ("conv2", c1, c2, 5, 1),
                 ("conv3", c2, c3, 5, 2)]
    back = [("conv3_1", c3, c3, 3, 1), ("conv4", c3, c4, 3, 2), ("conv4_1", c4, c4, 3, 1),
            ("conv5", c4, c5, 3, 2), ("conv5_1", c5, c5, 3, 1),
            ("conv6", c5, c6, 3, 2), ("conv6_1", c6, c6, 3, 1)]
    return front + back


def _skip_names(cfg: MotionNetConfig) -> dict[int, str]:
    """Encoder feature concatenated at each decoder level (same resolution)."""
    return {5: "conv5_1", 4: "conv4_1", 3: "conv3_1",
            2: "conv2_1" if cfg.small_displacement else "conv2"}


def stack_frames(frames: torch.Tensor, config: MotionNetConfig) -> torch.Tensor:
    """Checked frames (B, T, 3, H, W) normalised -> MotionNet's input (B, 3T, H, W), frame-major
    like the release's concat; a clear error for a wrong length, dtype or size."""
    if frames.dim() != 5 or frames.shape[1] != config.num_frames or frames.shape[2] != 3:
        raise ValueError(
            f"MotionNet expects frames (B, {config.num_frames}, 3, H, W), got {tuple(frames.shape)}; "
            "pass clips of the configured length or build it with a matching num_frames"
        )
    if not frames.is_floating_point():
        raise ValueError("MotionNet expects float frames; run h2s_dist.frames.normalize first")
    h, w = frames.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h == 0 or w == 0:
        raise ValueError(
            f"MotionNet needs H and W that are multiples of {SIZE_MULTIPLE}, got {h}x{w}; "
            "crop or resize (e.g. 224x224, 256x320)"
        )
    return frames.flatten(1, 2)


class MotionNet(nn.Module):
    """Frames (B, T, 3, H, W) -> raw flows [flow6, flow5, flow4, flow3, flow2].

    Input: float frames already normalised by `h2s_dist.frames.normalize`; H and W must
    be multiples of 32 (224x224 training crops, 256x320 full frames).
    Output k (k = 0..4, coarsest first) has shape (B, 2*(T-1), H/s, W/s) with
    s = LEVEL_STRIDES[k] = 32, 16, 8, 4, 2 (7, 14, 28, 56, 112 for a 224 input), in raw
    units (flow / 20 in full-resolution pixels; see the module docstring).
    """

    def __init__(self, config: MotionNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MotionNetConfig.paper()
        nf = cfg.flow_channels
        self.encoder = nn.ModuleDict(
            {name: nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)
             for name, cin, cout, k, s in _encoder_layers(cfg)}
        )
        channels = {name: cout for name, _, cout, _, _ in _encoder_layers(cfg)}
        self._skips = _skip_names(cfg)
        self.decoder = nn.ModuleDict()
        self.decoder["predict_flow6"] = nn.Conv2d(cfg.encoder_channels[-1], nf, 3, padding=1)
        prev = cfg.encoder_channels[-1]  # channels feeding the next deconv
        for level, width in zip(_DECODER_LEVELS, cfg.decoder_channels):
            concat = channels[self._skips[level]] + width + nf
            self.decoder[f"deconv{level}"] = nn.ConvTranspose2d(prev, width, 4, stride=2, padding=1)
            self.decoder[f"upsample_flow{level + 1}to{level}"] = nn.ConvTranspose2d(nf, nf, 4, stride=2, padding=1)
            if cfg.conv_between_deconv:
                self.decoder[f"xconv{level}"] = nn.Conv2d(concat, width, 3, padding=1)
                prev = width
            else:
                prev = concat
            self.decoder[f"predict_flow{level}"] = nn.Conv2d(prev, nf, 3, padding=1)
        self.reset_parameters()
        # The release fixes the biases of deconvK and upsample_flowK+1toK at 0 (lr_mult 0). They
        # stay parameters, frozen, rather than being removed, so that every state dict written
        # before keeps loading strictly (one whose biases were trained keeps them, fixed).
        for name in self.transposed_conv_names():
            self.decoder[name].bias.requires_grad_(False)

    def transposed_conv_names(self) -> list[str]:
        """Decoder modules that are transposed convolutions: deconvK and upsample_flowK+1toK."""
        return [name for name, m in self.decoder.items() if isinstance(m, nn.ConvTranspose2d)]

    def no_weight_decay_names(self) -> list[str]:
        """Parameter names the release trains without weight decay (decay_mult 0): the weights of
        deconvK and upsample_flowK+1toK (their biases are frozen at 0)."""
        return [f"decoder.{name}.weight" for name in self.transposed_conv_names()]

    def reset_parameters(self) -> None:
        """MSRA init as Caffe's "msra" filler (std sqrt(2 / fan_in)), biases 0; the
        predict_flowK heads get normal(0, flow_head_init_std) instead when that is set.

        For deconvolutions Caffe's fan_in is out_channels * k * k, which is also what
        torch computes for a ConvTranspose2d weight (in, out, k, k)."""
        heads = {id(m) for name, m in self.decoder.items() if name.startswith("predict_flow")}
        head_std = self.config.flow_head_init_std
        for m in self.modules():
            # Meta tensors (shape-only builds) have nothing to fill; skipping also avoids a
            # slow first normal_ on meta. Call reset_parameters() after materialising.
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not m.weight.is_meta:
                if id(m) in heads and head_std is not None:
                    nn.init.normal_(m.weight, std=head_std)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Frames (B, T, 3, H, W) normalised -> [flow6, flow5, flow4, flow3, flow2] raw."""
        return self.flows_from_stack(stack_frames(frames, self.config))

    def flows_from_stack(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The network proper on stacked frames (B, 3T, H, W), checked by `forward`. Free of
        shape-dependent control flow, so torch.fx can trace it (int8 quantisation, inference.py)."""
        slope = self.config.negative_slope
        features = {}
        for name, conv in self.encoder.items():
            x = F.leaky_relu(conv(x), slope)
            features[name] = x
        d = self.decoder
        flows = [d["predict_flow6"](x)]
        for level in _DECODER_LEVELS:
            up = F.leaky_relu(d[f"deconv{level}"](x), slope)
            up_flow = d[f"upsample_flow{level + 1}to{level}"](flows[-1])
            # Release order: encoder feature, deconv, upsampled flow.
            x = torch.cat([features[self._skips[level]], up, up_flow], dim=1)
            if self.config.conv_between_deconv:
                x = d[f"xconv{level}"](x)  # no activation, as released
            flows.append(d[f"predict_flow{level}"](x))
        return flows


def build_motionnet(flavour: str = "paper", **overrides) -> MotionNet:
    """A MotionNet of flavour "paper", "small" or "tiny", with config fields overridden by name,
    e.g. build_motionnet("tiny", num_frames=2, conv_between_deconv=False)."""
    factories = {"paper": MotionNetConfig.paper, "small": MotionNetConfig.small, "tiny": MotionNetConfig.tiny}
    if flavour not in factories:
        raise ValueError(f"unknown MotionNet flavour {flavour!r}; choose one of {sorted(factories)}")
    try:
        config = factories[flavour](**overrides)
    except TypeError as e:
        fields = [f.name for f in dataclasses.fields(MotionNetConfig)]
        raise ValueError(f"bad MotionNet override ({e}); valid fields: {fields}") from None
    return MotionNet(config)


def full_resolution_flow(flow2_raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Raw flow (B, 2N, h, w) -> pixel flow (B, N, 2, H, W) at `size` = (H, W).

    Bilinear upsampling (align_corners=False) then x RAW_FLOW_SCALE: raw units are
    already full-resolution pixels, so no per-level factor. Channel 0 = u (right),
    1 = v (down); flow n maps frame n to frame n+1 (backward warping)."""
    if flow2_raw.dim() != 4 or flow2_raw.shape[1] % 2:
        raise ValueError(f"expected raw flow (B, 2N, h, w), got {tuple(flow2_raw.shape)}")
    up = F.interpolate(flow2_raw, size=tuple(size), mode="bilinear", align_corners=False)
    b, c, h, w = up.shape
    return (up * RAW_FLOW_SCALE).view(b, c // 2, 2, h, w)
