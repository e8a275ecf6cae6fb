"""MotionNet's unsupervised losses: photometric, smoothness and SSIM at five scales.

Per level k (flow6 ... flow2), with the frames resized to the level's resolution and the
flow in that level's pixels (see `h2s_dist.warp` for the conventions):
  pixel_k  = mean over border-masked pixels of rho(frame_i - warp(frame_{i+1}, flow_i)),
             rho = generalised Charbonnier, alpha 0.4, beta 255 (frames in [0, 1]);
  smooth_k = mean of rho(forward differences of u and v in x and y), alpha 0.3;
  ssim_k   = mean(1 - SSIM(warped, frame_i)) over 8x8 windows at stride 8.
total = sum_k  pixel_level_weights[k] * pixel_k
             + smoothness_weight * smoothness_level_weights[k] * smooth_k
             + ssim_weight_scale * ssim_level_weights[k] * ssim_k.
Frames are shrunk to each level by area averaging, with no gradient. As in the release,
only the photometric term is border-masked; SSIM sees the whole warped image, zeros
pulled in from outside included.

Differences from the Caffe release, on purpose (PAPER.md "Release quirk"):
  - Every term is a mean over its valid elements. The release's Charbonnier divides a
    masked sum by batch x mask-sum (the mask counts 30 channels), its SSIM returns
    sum(1 - SSIM) / batch, and its smoothness term reuses the 30-channel photometric
    border mask on 20-channel flow differences (so it is border-masked too). The
    relative scale of the terms therefore differs from the release's by constant
    factors; tune the weights if you need the release's exact balance.
  - SSIM: the Gaussian is centred in the window ((k-1)/2, the release uses k/2) and
    windows cut by the image edge renormalise their weights (the release truncates
    them without renormalising).

Imports torch (and h2s_dist.frames) only. Tests: `python -m pytest tests/unit/test_losses.py -q`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from h2s_dist.frames import MEAN_RGB_255
from h2s_dist.warp import RAW_FLOW_SCALE, backward_warp, border_mask, raw_to_pixels, split_flows


def charbonnier(x: torch.Tensor, alpha: float, beta: float, eps: float = 1e-3) -> torch.Tensor:
    """Generalised Charbonnier ((beta * x)^2 + eps^2)^alpha, elementwise; eps^(2 alpha) at 0."""
    return ((beta * x) ** 2 + eps**2) ** alpha


def smoothness_loss(
    flow_px: torch.Tensor, alpha: float, beta: float = 1.0, eps: float = 1e-3
) -> torch.Tensor:
    """Mean Charbonnier of the forward differences of a flow field, a 0-dim tensor.

    flow_px (..., H, W), usually (N, 2, H, W) in pixels. Differences f[x+1] - f[x] in
    x and f[y+1] - f[y] in y; the last column (x) and last row (y) have no forward
    neighbour and are left out of the mean. beta = 1 for pixel-unit flow (the release's
    beta = level multiplier acts on raw flow, which is the same thing).
    """
    dx = flow_px[..., :, 1:] - flow_px[..., :, :-1]
    dy = flow_px[..., 1:, :] - flow_px[..., :-1, :]
    count = dx.numel() + dy.numel()
    if count == 0:  # a 1x1 level has no neighbours
        return flow_px.sum() * 0.0
    total = charbonnier(dx, alpha, beta, eps).sum() + charbonnier(dy, alpha, beta, eps).sum()
    return total / count


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(size, size) Gaussian weights centred in the window, summing to 1."""
    r = torch.arange(size, device=like.device, dtype=like.dtype) - (size - 1) / 2.0
    g = torch.exp(-(r**2) / (2.0 * sigma**2))
    g2 = g[:, None] * g[None, :]
    return g2 / g2.sum()


def _num_windows(length: int, window: int, stride: int) -> int:
    """Windows along one axis, as the release's pooling: the last one may be cut short."""
    return max(1, math.ceil((length - window) / stride) + 1)


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    window: int = 8,
    stride: int = 8,
    sigma: float = 4.0 / 3.0,
    c1: float = 1e-4,
    c2: float = 1e-3,
) -> torch.Tensor:
    """SSIM per channel and window: x, y (N, C, H, W) -> (N, C, h', w').

    Gaussian-weighted statistics over `window` x `window` patches every `stride` pixels
    (8 and 8 = non-overlapping, sigma = 4/3 so the window spans +-3 sigma). Windows cut
    by the bottom/right edge use the weights of their valid part, renormalised.
    SSIM = (2 mu_x mu_y + c1)(2 s_xy + c2) / ((mu_x^2 + mu_y^2 + c1)(s_x^2 + s_y^2 + c2)).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim_map expects two (N, C, H, W) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    n, c, h, w = x.shape
    ph, pw = _num_windows(h, window, stride), _num_windows(w, window, stride)
    pad = (0, (pw - 1) * stride + window - w, 0, (ph - 1) * stride + window - h)
    g = _gaussian_window(window, sigma, x).view(1, 1, window, window)
    # One grouped convolution gives all five moments; zero padding + the convolved
    # ones-mask below turns cut windows into renormalised partial windows.
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    sums = F.conv2d(F.pad(moments, pad), g.expand(5 * c, 1, -1, -1), stride=stride, groups=5 * c)
    weight = F.conv2d(F.pad(torch.ones_like(x[:1, :1]), pad), g, stride=stride)
    mu_x, mu_y, e_xx, e_yy, e_xy = (sums / weight).split(c, dim=1)
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return luminance * contrast_structure


def ssim_loss(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """mean(1 - SSIM) over batch, channels and windows; kwargs go to `ssim_map`."""
    return (1.0 - ssim_map(x, y, **kwargs)).mean()


def local_response_norm(frames01: torch.Tensor) -> torch.Tensor:
    """The release's LRN of the loss images, (..., 3, H, W) in [0, 1] -> same shape.

    The release applies Caffe LRN (ACROSS_CHANNELS, local_size 9, alpha 1, beta 0.7,
    k 1) to every input frame as the network sees it, (x - mean) / 255, before resizing
    to the levels; photometric and SSIM terms then compare LRN'd images. With 3
    channels the size-9 window covers all of them: x / (1 + sum_c x_c^2 / 9)^0.7.
    """
    mean = torch.tensor(MEAN_RGB_255, device=frames01.device, dtype=frames01.dtype) / 255.0
    centred = frames01 - mean.view(3, 1, 1)
    flat = centred.reshape(-1, *centred.shape[-3:])
    return F.local_response_norm(flat, size=9, alpha=1.0, beta=0.7, k=1.0).reshape(frames01.shape)


@dataclass(frozen=True)
class UnsupervisedLossConfig:
    """Weights and constants of the unsupervised flow loss (PAPER.md "Unsupervised loss").

    Per-level tuples run coarsest first (flow6, flow5, flow4, flow3, flow2) and must
    match the number of flow levels passed to `unsupervised_flow_loss`."""

    pixel_alpha: float = 0.4
    """Charbonnier exponent of the photometric term."""
    pixel_beta: float = 255.0
    """Charbonnier pre-scale of the photometric term (255: frames in [0, 1] to 0..255)."""
    pixel_level_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    """Photometric weight per level, flow6 ... flow2."""
    smoothness_alpha: float = 0.3
    """Charbonnier exponent of the smoothness term (beta is 1 on pixel-unit flow)."""
    smoothness_level_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    """Smoothness weight per level, flow6 ... flow2."""
    smoothness_weight: float = 1.0
    """Global smoothness weight: the paper's lambda2 ("as suggested in FlowNet"). The
    release has no separate scalar; it is carried by beta = the level's flow multiplier,
    which our pixel-unit flow already includes, so 1.0 reproduces the release."""
    ssim_level_weights: tuple[float, ...] = (0.16, 0.08, 0.04, 0.02, 0.01)
    """SSIM weight per level, flow6 ... flow2 (pretraining values)."""
    ssim_weight_scale: float = 1.0
    """Multiplies every SSIM weight: 1.0 in pretraining, 0.1 in end-to-end fine-tuning."""
    border_fraction: float = 0.1
    """Photometric border mask, a fraction of min(h, w) at each level."""
    use_lrn: bool = False
    """Compare LRN'd images as the release does (see `local_response_norm`). Off by
    default: the paper does not mention it and it changes the photometric scale."""
    eps: float = 1e-3
    """Charbonnier epsilon of both terms."""

    def __post_init__(self) -> None:
        lengths = {len(self.pixel_level_weights), len(self.smoothness_level_weights),
                   len(self.ssim_level_weights)}
        if len(lengths) != 1:
            raise ValueError(
                "pixel_level_weights, smoothness_level_weights and ssim_level_weights need "
                f"one value per flow level each; got lengths {sorted(lengths)}"
            )
        weights = (self.pixel_level_weights + self.smoothness_level_weights
                   + self.ssim_level_weights + (self.smoothness_weight, self.ssim_weight_scale))
        if min(weights) < 0:
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        if self.pixel_alpha <= 0 or self.smoothness_alpha <= 0 or self.eps <= 0:
            raise ValueError("pixel_alpha, smoothness_alpha and eps must be > 0")
        if not 0.0 <= self.border_fraction < 0.5:
            raise ValueError(f"border_fraction must be in [0, 0.5), got {self.border_fraction}")

    @property
    def num_levels(self) -> int:
        """Number of flow levels the weights describe (5 for MotionNet)."""
        return len(self.pixel_level_weights)

    @classmethod
    def pretraining(cls, **overrides) -> UnsupervisedLossConfig:
        """MotionNet pretraining: SSIM weights 0.16 ... 0.01."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def finetuning(cls, **overrides) -> UnsupervisedLossConfig:
        """End-to-end fine-tuning, mode (c): SSIM weights ten times smaller."""
        return dataclasses.replace(cls(ssim_weight_scale=0.1), **overrides)


def _level_names(num_levels: int) -> tuple[str, ...]:
    """flow6 ... flow2 for MotionNet's five levels; flow{n+1} ... for other counts."""
    return tuple(f"flow{num_levels + 1 - i}" for i in range(num_levels))


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size); area averaging when shrinking (anti-aliased)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    mode = "area" if size[0] <= images.shape[-2] and size[1] <= images.shape[-1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(images, size=size, mode=mode, **kwargs)


def _check_inputs(frames01: torch.Tensor, flows: list[torch.Tensor], num_levels: int) -> None:
    if frames01.dim() != 5 or frames01.shape[2] != 3:
        raise ValueError(f"expected frames (B, T, 3, H, W) in [0, 1], got {tuple(frames01.shape)}")
    b, t = frames01.shape[:2]
    if len(flows) != num_levels:
        raise ValueError(
            f"got {len(flows)} flow levels but the loss config has weights for {num_levels}; "
            "pass all of MotionNet's outputs or set the *_level_weights to match"
        )
    for k, flow in enumerate(flows):
        if flow.dim() != 4 or flow.shape[0] != b or flow.shape[1] != 2 * (t - 1):
            raise ValueError(
                f"flow level {k} has shape {tuple(flow.shape)}; expected ({b}, {2 * (t - 1)}, h, w) "
                f"for {t} frames"
            )


def _level_terms(
    frames: torch.Tensor, raw: torch.Tensor, full_size: tuple[int, int], config: UnsupervisedLossConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixel, smooth, ssim) at one level; frames (B, T, 3, H, W) already detached."""
    b, t = frames.shape[:2]
    h, w = raw.shape[-2:]
    flow = split_flows(raw_to_pixels(raw, *full_size)).reshape(b * (t - 1), 2, h, w)
    level = _resize(frames.flatten(0, 1), (h, w)).reshape(b, t, 3, h, w)
    # All T-1 pairs in one warp call: frame i+1 sampled along flow i rebuilds frame i.
    target = level[:, :-1].reshape(b * (t - 1), 3, h, w)
    warped = backward_warp(level[:, 1:].reshape(b * (t - 1), 3, h, w), flow)
    mask = border_mask(h, w, config.border_fraction, device=raw.device).to(raw.dtype)
    rho = charbonnier(target - warped, config.pixel_alpha, config.pixel_beta, config.eps)
    pixel = (rho * mask).sum() / (mask.sum() * rho.shape[0] * rho.shape[1])
    smooth = smoothness_loss(flow, config.smoothness_alpha, 1.0, config.eps)
    return pixel, smooth, ssim_loss(warped, target)


def unsupervised_flow_loss(
    frames01: torch.Tensor, flows: list[torch.Tensor], config: UnsupervisedLossConfig | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The multi-scale unsupervised loss of MotionNet's raw outputs -> (total, terms).

    frames01 (B, T, 3, H, W) in [0, 1] (`h2s_dist.frames.denormalize` of the network
    input); no gradient flows into them. flows: MotionNet's raw outputs, coarsest first,
    each (B, 2*(T-1), h_k, w_k) in raw units (flow / 20 in full-resolution pixels).
    total: 0-dim tensor with gradient to the flows. terms: detached 0-dim tensors,
    "pixel", "smooth", "ssim" = the weighted contributions (they sum to total), and
    "pixel/flow6", "smooth/flow6", "ssim/flow6", ... = the unweighted per-level means.
    """
    config = config or UnsupervisedLossConfig()
    _check_inputs(frames01, flows, config.num_levels)
    frames = frames01.detach()
    if config.use_lrn:
        frames = local_response_norm(frames)
    full_size = (frames.shape[-2], frames.shape[-1])
    parts = {"pixel": [], "smooth": [], "ssim": []}
    terms: dict[str, torch.Tensor] = {}
    for k, (name, raw) in enumerate(zip(_level_names(len(flows)), flows)):
        pixel, smooth, ssim = _level_terms(frames, raw, full_size, config)
        parts["pixel"].append(config.pixel_level_weights[k] * pixel)
        parts["smooth"].append(
            config.smoothness_weight * config.smoothness_level_weights[k] * smooth
        )
        parts["ssim"].append(config.ssim_weight_scale * config.ssim_level_weights[k] * ssim)
        for key, value in (("pixel", pixel), ("smooth", smooth), ("ssim", ssim)):
            terms[f"{key}/{name}"] = value.detach()
    sums = {key: torch.stack(values).sum() for key, values in parts.items()}
    total = sums["pixel"] + sums["smooth"] + sums["ssim"]
    terms.update({key: value.detach() for key, value in sums.items()})
    return total, terms


def reconstruction_images(frames01: torch.Tensor, flow2_raw: torch.Tensor) -> torch.Tensor:
    """Frames rebuilt by warping, for logging pictures: (B, T-1, 3, H, W) in [0, 1].

    frames01 (B, T, 3, H, W); flow2_raw (B, 2*(T-1), h, w) raw (usually flow2, half
    resolution). The flow is upsampled bilinearly to (H, W) and scaled to full-resolution
    pixels; output i is frame i+1 warped by flow i, to compare with frames01[:, i].
    """
    _check_inputs(frames01, [flow2_raw], 1)
    b, t, _, h, w = frames01.shape
    with torch.no_grad():
        up = F.interpolate(flow2_raw, size=(h, w), mode="bilinear", align_corners=False)
        flow = split_flows(up * RAW_FLOW_SCALE).reshape(b * (t - 1), 2, h, w)
        warped = backward_warp(frames01[:, 1:].reshape(b * (t - 1), 3, h, w), flow)
    return warped.view(b, t - 1, 3, h, w)


def action_loss(
    scores: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of class scores (computed in fp32), with the terms every classifier
    stage logs: `loss/action` and `train/top1` (the micro-batch's top-1 accuracy)."""
    loss = F.cross_entropy(scores.float(), labels, label_smoothing=label_smoothing)
    top1 = float((scores.argmax(1) == labels).float().mean())
    return loss, {"loss/action": float(loss.detach()), "train/top1": top1}
