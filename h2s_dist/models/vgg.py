"""VGG16 (13 conv + 3 fc) in plain torch, for the spatial (RGB) and temporal (flow) streams.

Layer names follow the release (conv1_1 ... conv5_3, fc6, fc7, fc8), so a converted
Caffe checkpoint maps onto the state dict by name: `features.conv1_1.weight`,
`classifier.fc8.bias`, ...

Input sizes: pool5 sits at 1/32 of the input, so H and W must be >= 32. An adaptive
average pool brings pool5 to `pooled_size` before fc6: for the paper flavour
(pooled_size 7) it is the identity at 224x224, exactly the release's VGG16, and lets
other sizes run; the tiny flavour pools to 1x1 so 32x32 or 64x64 crops work.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from h2s_dist.models.limits import VGG_MIN_INPUT_SIZE

# Convolutions per block (2, 2, 3, 3, 3 = 13), each block ends with a 2x2 max pool.
_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
MIN_INPUT_SIZE = VGG_MIN_INPUT_SIZE
# The classifier a network trained on another class count cannot hand on (UCF101 101 ->
# HMDB51 51, ImageNet 1000 -> UCF101 101): weights.load_weights(..., new_head=) leaves it at its init.
VGG16_CLASSIFIER = ("classifier.fc8.weight", "classifier.fc8.bias")


@dataclass(frozen=True)
class VGG16Config:
    """Shape of a VGG16. `paper()` is the standard VGG16; `tiny()` is narrow and small-input."""

    in_channels: int = 3
    """3 for the spatial stream (RGB), 2*(T-1) = 20 for the temporal stream (stacked flow)."""
    num_classes: int = 101
    """Size of fc8: 101 for UCF101, 51 for HMDB51, 1000 for ImageNet."""
    conv_channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    """Width of the convolutions in each of the 5 blocks."""
    fc_channels: int = 4096
    """Width of fc6 and fc7."""
    pooled_size: int = 7
    """pool5 is adaptively average-pooled to pooled_size x pooled_size before fc6
    (identity for the paper flavour at 224x224)."""
    dropout_fc6: float = 0.9
    """Dropout probability after fc6 (the paper's 0.9)."""
    dropout_fc7: float = 0.8
    """Dropout probability after fc7 (the paper's 0.8)."""
    fc8_init_std: float = 0.001
    """fc8 weights ~ normal(0, fc8_init_std), bias 0 (the paper's 0.001)."""

    def __post_init__(self) -> None:
        if len(self.conv_channels) != 5:
            raise ValueError(f"VGG16Config needs 5 conv_channels (one per block), got {self.conv_channels}")
        if min(self.in_channels, self.num_classes, self.fc_channels, self.pooled_size, *self.conv_channels) < 1:
            raise ValueError("VGG16Config sizes must be positive")
        for name in ("dropout_fc6", "dropout_fc7"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def paper(cls, **overrides) -> VGG16Config:
        """The standard VGG16 (about 138M parameters for 3 -> 1000)."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides) -> VGG16Config:
        """Widths 8 ... 64, fc 64, pool5 averaged to 1x1: for tests and CPU quickstarts.
        Dropout 0.5: the paper's 0.9 leaves about 6 of 64 fc units alive, too few to learn."""
        base = cls(conv_channels=(8, 16, 32, 64, 64), fc_channels=64, pooled_size=1,
                   dropout_fc6=0.5, dropout_fc7=0.5)
        return dataclasses.replace(base, **overrides)


class VGG16(nn.Module):
    """Images (B, C_in, H, W), H, W >= 32 -> pre-softmax scores (B, num_classes).

    Spatial stream: RGB normalised by `h2s_dist.frames.normalize`. Temporal stream:
    20 flow channels u0, v0, ..., u9, v9 as produced by `FlowNormalize` (about -128..127).
    """

    def __init__(self, config: VGG16Config | None = None) -> None:
        super().__init__()
        self.config = cfg = config or VGG16Config.paper()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin = cfg.in_channels
        for block, (n, width) in enumerate(zip(_CONVS_PER_BLOCK, cfg.conv_channels), start=1):
            for i in range(1, n + 1):
                layers[f"conv{block}_{i}"] = nn.Conv2d(cin, width, 3, padding=1)
                layers[f"relu{block}_{i}"] = nn.ReLU(inplace=True)
                cin = width
            layers[f"pool{block}"] = nn.MaxPool2d(2, 2)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(cfg.pooled_size)
        fc_in = cin * cfg.pooled_size**2
        self.classifier = nn.Sequential(OrderedDict(
            fc6=nn.Linear(fc_in, cfg.fc_channels), relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(cfg.dropout_fc6),
            fc7=nn.Linear(cfg.fc_channels, cfg.fc_channels), relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(cfg.dropout_fc7),
            fc8=nn.Linear(cfg.fc_channels, cfg.num_classes),
        ))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """From-scratch init (real runs load ImageNet weights): convs and fc6/fc7 MSRA,
        fc8 normal(0, fc8_init_std) as the paper; biases 0. MSRA for fc6/fc7 is about
        the classic normal(0, 0.01) at paper width (std 0.009 for fc6), and keeps the
        signal alive in the narrow tiny flavour, where 0.01 shrank it 18-fold per layer
        and the network never left chance. Meta tensors (shape-only builds) are skipped."""
        if self.classifier.fc8.weight.is_meta:
            return
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for name, m in self.classifier.named_children():
            if isinstance(m, nn.Linear):
                if name == "fc8":
                    nn.init.normal_(m.weight, 0.0, self.config.fc8_init_std)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> scores (B, num_classes), before softmax."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"VGG16 expects (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"VGG16 needs H, W >= {MIN_INPUT_SIZE} (five 2x2 pools), got "
                f"{tuple(x.shape[-2:])}; use larger crops"
            )
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build_vgg16(flavour: str = "paper", in_channels: int = 3, num_classes: int = 101, **overrides) -> VGG16:
    """A VGG16 of flavour "paper" or "tiny"; other VGG16Config fields by name."""
    factories = {"paper": VGG16Config.paper, "tiny": VGG16Config.tiny}
    if flavour not in factories:
        raise ValueError(f"unknown VGG16 flavour {flavour!r}; choose one of {sorted(factories)}")
    try:
        config = factories[flavour](in_channels=in_channels, num_classes=num_classes, **overrides)
    except TypeError as e:
        fields = [f.name for f in dataclasses.fields(VGG16Config)]
        raise ValueError(f"bad VGG16 override ({e}); valid fields: {fields}") from None
    return VGG16(config)


# Our RGB networks see (pixel - mean) / 255, about +-0.5, while a flow stack reaches the
# temporal VGG16 in image units, q - 128 in [-128, 127] (FlowNormalize). The release feeds both
# in 0..255 units and copies the averaged filters as they are; here they are divided by 255 so
# that conv1 answers a flow stack on the scale its RGB filters were trained for.
FLOW_INPUT_SCALE = 1.0 / 255.0


def cross_modality_conv1(rgb_weight: torch.Tensor, in_channels: int, scale: float = FLOW_INPUT_SCALE) -> torch.Tensor:
    """Cross-modality init: conv1 weight (O, 3, k, k) -> (O, in_channels, k, k).

    The RGB filters are averaged over their input channels and the mean is replicated
    on every new input channel (the paper's temporal-stream initialisation), times `scale`
    (1/255: RGB input (pixel - mean)/255 vs flow input in 0..255 units; see FLOW_INPUT_SCALE)."""
    if rgb_weight.dim() != 4:
        raise ValueError(f"expected a conv weight (O, C, k, k), got {tuple(rgb_weight.shape)}")
    mean = rgb_weight.mean(dim=1, keepdim=True) * scale
    return mean.expand(-1, in_channels, -1, -1).clone()


def temporal_from_rgb(
    rgb_state_dict: Mapping[str, torch.Tensor],
    in_channels: int = 20,
    target_state_dict: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """State dict of an RGB VGG16 -> one for an `in_channels`-input VGG16.

    conv1_1's weight goes through `cross_modality_conv1`; every other tensor is copied.
    When `target_state_dict` (e.g. `temporal_vgg.state_dict()`) is given, tensors whose
    shape differs from the target's are LEFT OUT (typically fc8 when the class count
    changes, ImageNet 1000 -> UCF101 101); load the result with `strict=False` and
    expect exactly those keys missing."""
    key = "features.conv1_1.weight"
    if key not in rgb_state_dict:
        raise ValueError(f"{key!r} not in the state dict: is it a h2s_dist VGG16's?")
    out = {k: v.clone() for k, v in rgb_state_dict.items()}
    out[key] = cross_modality_conv1(rgb_state_dict[key], in_channels)
    if target_state_dict is not None:
        out = {k: v for k, v in out.items()
               if k in target_state_dict and target_state_dict[k].shape == v.shape}
    return out
