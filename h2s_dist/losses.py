"""MotionNet's unsupervised losses: photometric, smoothness and SSIM at five scales.

Per level k (flow6 ... flow2), frames resized to the level's resolution (area averaging,
no gradient), flow in that level's pixels (conventions in `h2s_dist.warp`), and for each
of the T-1 pairs frame i+1 warped back onto frame i:
  pixel_k  = mean over the valid elements (10% border mask, every RGB channel of every
             pair and sample) of rho(frame_i - warped), rho = generalised Charbonnier,
             alpha 0.4, beta 255 (frames in [0, 1]);
  smooth_k = mean over the valid elements (10% border mask x "has a forward neighbour")
             of rho(forward differences of u and v in x and y), alpha 0.3;
  ssim_k   = mean(1 - SSIM(warped, frame_i)) over samples, 3(T-1) channels and the
             8x8 windows at stride 8 (no border mask: zeros pulled in count, as released).

How the means are put together (PAPER.md "How the release normalises each term"):
  normalisation "release" (default): the value of the Caffe release's loss layers for a
  batch of N = reference_batch_size (16 in pretraining, 8 in fine-tuning) with the same
  per-sample content as ours, C = 3(T-1) loss channels of a clip of T = reference_num_frames
  (the release's 11, whatever our clip length), W_k = SSIM windows per channel:
      total = sum_k  p_k * pixel_k / N
                   + lambda2 * s_k * (4/3) * smooth_k / N
                   + q * w_k * C * W_k * ssim_k,
  with p_k the pixel weights (1), s_k the smoothness weights (1), lambda2 the smoothness
  weight (1), w_k the SSIM ladder (0.16 ... 0.01) and q the ladder's scale (1; 0.1 when
  fine-tuning). Where it comes from:
    - the release's Charbonnier divides sum(mask * rho) by N * sum(mask), and its mask blob
      has all N x C channels: mean over valid elements / N;
    - its smoothness runs U and V through two such layers whose difference blobs have
      2(T-1) channels (dx, dy of each flow) but whose mask counts 3(T-1): each is
      (2/3) mean / N, together (4/3) mean / N (exactly so wherever the 10% border covers
      the last row and column, i.e. levels of 5 px and more: every level of a 224 crop;
      on smaller levels smooth_k stays the mean over the differences that exist);
    - its SSIM returns sum(1 - SSIM) over batch, channels and windows divided by N: the
      batch mean of a per-sample SUM, C * W_k * ssim_k.
  The photometric and smoothness terms keep the release's /N with N fixed: dividing by our
  batch B instead would move the balance with B (at B = 2 per GPU the photometric term
  would weigh 8x more against SSIM than in the release). The SSIM term is a batch mean of
  per-sample sums, which does not depend on B. So for any B the loss equals the release's
  on a batch of N samples like ours, and at B = N (and T = reference_num_frames) it is the
  release's formula exactly. The SSIM sum over a clip's channels would move the balance with
  T the same way (a 2-frame clip has 3 channels to the release's 30), hence C from the
  reference T: every pair of any clip weighs as a pair of the release's 11-frame clips.
  Under DDP every rank computes this over its own B and the gradients are averaged, which
  is the gradient of the same expression over the global batch.
  normalisation "mean": every term is the plain mean, weighted by the mean-form equivalents
  of the same balance: pixel 1, smoothness 4/3, SSIM w_k * C * W_k * N (76.8, 153.6,
  307.2, 470.4, 940.8 for 224 crops, 11 frames, N = 16; computed from the level sizes, not
  hard-coded). That is N times the release form: the same balance between the terms, a
  larger total (multiply a fine-tuning `unsup_weight` by 1/N to keep the balance against
  the action loss).
  SSIM is a large share of the release's loss (at zero flow on a moving texture, about
  2.8x the photometric term at 224 crops): a plain mean of every term with the nominal
  weights (this module's form before) left SSIM at ~1e-4 of the loss.

Beyond the paper, each off by default (UnsupLossSpec names the same options); each
replaces a plain mean above and is normalised as that term is:
  photometric "census": UFlow's soft 7x7 census on grayscale, soft Hamming distance and
      (|d| + 0.01)^0.4, one value per pixel and pair, instead of the Charbonnier of RGB
      differences;
  smoothness "edge_aware_first" / "edge_aware_second": UFlow's first- or second-order
      differences, each weighted by exp(-edge_weight * mean_c |image gradient|) of frame i
      (the penalty stays the alpha-0.3 Charbonnier, where UFlow uses sqrt(x^2 + eps^2));
  occlusion "forward_backward": UnFlow's consistency check with the flows of the time-
      reversed clip (`backward_flows`); occluded pixels leave the photometric mean (its
      count too) and each SSIM window counts by its visible fraction. No gradient flows
      through the mask, and there is no occlusion penalty (UnFlow's lambda_p).

The loss runs in fp32 even under bf16 autocast (SSIM's E[x^2] - mu^2 loses most of its
precision in bf16). Other differences from the release, on purpose: the SSIM Gaussian is
centred in the window ((k-1)/2; the release uses k/2) and windows cut by the image edge
renormalise their weights (the release truncates them without renormalising).

Imports torch, h2s_dist.frames and h2s_dist.warp only.
Tests: `python -m pytest tests/unit/test_losses.py -q`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from h2s_dist.frames import MEAN_RGB_255
from h2s_dist.warp import (
    RAW_FLOW_SCALE,
    backward_flows_from_reversed_clip,
    backward_warp,
    border_mask,
    forward_backward_visible,
    raw_to_pixels,
    split_flows,
)

NORMALISATIONS = ("release", "mean")
PHOTOMETRIC_TERMS = ("charbonnier", "census")
SMOOTHNESS_TERMS = ("first_order", "edge_aware_first", "edge_aware_second")
OCCLUSION_MASKS = ("none", "forward_backward")


def charbonnier(x: torch.Tensor, alpha: float, beta: float, eps: float = 1e-3) -> torch.Tensor:
    """Generalised Charbonnier ((beta * x)^2 + eps^2)^alpha, elementwise; eps^(2 alpha) at 0."""
    return ((beta * x) ** 2 + eps**2) ** alpha


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(values * mask) / (number of elements of `values` the mask lets through).

    `mask` (0/1) broadcasts against `values`; a mask that lets nothing through gives 0
    (with gradient), not NaN."""
    count = mask.expand_as(values).sum().clamp_min(1.0)
    return (values * mask).sum() / count


# --- Smoothness -------------------------------------------------------------------


def finite_difference(x: torch.Tensor, order: int, dim: int) -> torch.Tensor:
    """Forward differences of `order` 1 or 2 along `dim` (-1 = x, -2 = y); that axis
    shrinks by `order`. Order 1: x[i+1] - x[i] (belongs to pixel i); order 2:
    x[i+2] - 2 x[i+1] + x[i] (belongs to the centre pixel i+1)."""
    n = x.shape[dim]
    if order == 1:
        return x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)
    if order == 2:
        return x.narrow(dim, 2, n - 2) - 2 * x.narrow(dim, 1, n - 2) + x.narrow(dim, 0, n - 2)
    raise ValueError(f"order must be 1 or 2, got {order}")


def edge_weights(image: torch.Tensor, order: int, dim: int, edge_weight: float) -> torch.Tensor:
    """UFlow's edge-aware weights exp(-edge_weight * mean_c |image gradient|), (N, 1, ...).

    image (N, C, H, W) in [0, 1]. The gradient lines up with `finite_difference(flow,
    order, dim)`: I[i+1] - I[i] for order 1, I[i+2] - I[i] (stride 2) for order 2. Near 0
    across a strong edge, 1 where the image is flat (or edge_weight is 0)."""
    n = image.shape[dim]
    grad = image.narrow(dim, order, n - order) - image.narrow(dim, 0, n - order)
    return torch.exp(-edge_weight * grad.abs().mean(dim=-3, keepdim=True))


def smoothness_loss(
    flow_px: torch.Tensor,
    alpha: float,
    beta: float = 1.0,
    eps: float = 1e-3,
    *,
    order: int = 1,
    mask: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    edge_weight: float = 0.0,
) -> torch.Tensor:
    """Mean Charbonnier of the order-1 or order-2 differences of a flow field, 0-dim.

    flow_px (N, 2, H, W) in pixels (any (..., H, W) without `image`). Differences in x and
    y (`finite_difference`); a pixel without the neighbours it needs (last column/row for
    order 1, first and last for order 2) is left out of the mean, and so is a pixel
    outside `mask` (H, W), read at the pixel the difference belongs to. With `image` (N, C,
    H, W) each difference is weighted by `edge_weights` (the mean still counts elements,
    not weights). beta = 1 for pixel-unit flow (the release's beta = level multiplier acts
    on raw flow, which is the same thing). A level too small to difference gives 0.
    """
    total = flow_px.sum() * 0.0
    count = flow_px.new_zeros(())
    for dim in (-1, -2):
        if flow_px.shape[dim] <= order:
            continue
        rho = charbonnier(finite_difference(flow_px, order, dim), alpha, beta, eps)
        if image is not None:
            rho = rho * edge_weights(image, order, dim, edge_weight)
        if mask is None:
            total, count = total + rho.sum(), count + rho.numel()
        else:  # the mask at the pixels the differences belong to (see finite_difference)
            keep = mask.narrow(dim, order - 1, mask.shape[dim] - order)
            total, count = total + (rho * keep).sum(), count + keep.expand_as(rho).sum()
    return total / count.clamp_min(1.0)


# --- Photometric ------------------------------------------------------------------


def rgb_to_gray(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma (0.2989 R + 0.5870 G + 0.1140 B)."""
    weights = image.new_tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1)
    return (image * weights).sum(dim=1, keepdim=True)


def census_transform(image: torch.Tensor, patch_size: int = 7) -> torch.Tensor:
    """UFlow's soft census: (N, 3, H, W) in [0, 1] -> (N, patch_size^2, H, W).

    For every pixel and every neighbour in the patch, d = gray255(neighbour) -
    gray255(centre), softly binarised to d / sqrt(0.81 + d^2) (~ sign(d) once d is a few
    grey levels). Neighbours beyond the edge repeat the edge pixel, so a global brightness
    offset leaves the result unchanged everywhere, and a positive gain nearly so."""
    gray = rgb_to_gray(image) * 255.0
    r = patch_size // 2
    padded = F.pad(gray, (r, r, r, r), mode="replicate")
    eye = torch.eye(patch_size * patch_size, device=image.device, dtype=image.dtype)
    neighbours = F.conv2d(padded, eye.view(-1, 1, patch_size, patch_size))
    diff = neighbours - gray
    return diff / torch.sqrt(0.81 + diff**2)


def census_distance(a: torch.Tensor, b: torch.Tensor, patch_size: int = 7) -> torch.Tensor:
    """Soft Hamming distance of the census transforms of two images, (N, 1, H, W) >= 0.

    a, b (N, 3, H, W) in [0, 1]; per neighbour t^2 / (0.1 + t^2), t = the difference of
    the soft census values, summed over the patch (UFlow). 0 for identical images."""
    t = census_transform(a, patch_size) - census_transform(b, patch_size)
    sq = t**2
    return (sq / (0.1 + sq)).sum(dim=1, keepdim=True)


def robust_penalty(x: torch.Tensor, q: float = 0.4, eps: float = 0.01) -> torch.Tensor:
    """UFlow's abs_robust_loss (|x| + eps)^q, elementwise; eps^q at 0."""
    return (x.abs() + eps) ** q


# --- SSIM -------------------------------------------------------------------------


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(size, size) Gaussian weights centred in the window, summing to 1."""
    r = torch.arange(size, device=like.device, dtype=like.dtype) - (size - 1) / 2.0
    g = torch.exp(-(r**2) / (2.0 * sigma**2))
    g2 = g[:, None] * g[None, :]
    return g2 / g2.sum()


def _num_windows(length: int, window: int, stride: int) -> int:
    """Windows along one axis, as the release's pooling: the last one may be cut short."""
    return max(1, math.ceil((length - window) / stride) + 1)


def num_ssim_windows(height: int, width: int, window: int = 8, stride: int = 8) -> int:
    """SSIM windows per channel of an (height, width) image: 1, 4, 16, 49, 196 for the
    7, 14, 28, 56, 112 px levels of a 224 crop (1, 2, 4, 7, 14 per side)."""
    return _num_windows(height, window, stride) * _num_windows(width, window, stride)


def window_means(x: torch.Tensor, window: int = 8, stride: int = 8, sigma: float = 4.0 / 3.0) -> torch.Tensor:
    """Gaussian-weighted mean of each channel over each window: (N, C, H, W) -> (N, C, h', w').

    `window` x `window` patches every `stride` pixels; a window cut by the bottom/right
    edge uses the weights of its valid part, renormalised."""
    _, c, h, w = x.shape
    ph, pw = _num_windows(h, window, stride), _num_windows(w, window, stride)
    pad = (0, (pw - 1) * stride + window - w, 0, (ph - 1) * stride + window - h)
    g = _gaussian_window(window, sigma, x).view(1, 1, window, window)
    # Zero padding + the convolved ones-mask turns cut windows into renormalised partial ones.
    sums = F.conv2d(F.pad(x, pad), g.expand(c, 1, -1, -1), stride=stride, groups=c)
    weight = F.conv2d(F.pad(torch.ones_like(x[:1, :1]), pad), g, stride=stride)
    return sums / weight


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

    Gaussian-weighted statistics (`window_means`) over `window` x `window` patches every
    `stride` pixels (8 and 8 = non-overlapping, sigma = 4/3 so the window spans +-3 sigma).
    SSIM = (2 mu_x mu_y + c1)(2 s_xy + c2) / ((mu_x^2 + mu_y^2 + c1)(s_x^2 + s_y^2 + c2)).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim_map expects two (N, C, H, W) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    c = x.shape[1]
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    mu_x, mu_y, e_xx, e_yy, e_xy = window_means(moments, window, stride, sigma).split(c, dim=1)
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
    match the number of flow levels passed to `unsupervised_flow_loss`. The module
    docstring has the formula each weight enters."""

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
    normalisation: str = "release"
    """"release": the Caffe release's per-term normalisation (photometric and smoothness
    means / N, SSIM a per-sample sum); "mean": plain means weighted by the mean-form
    equivalents (N times the release form, same balance). See the module docstring."""
    reference_batch_size: int = 16
    """N of the release's normalisation: the release's batch (16 in pretraining, 8 in
    fine-tuning), not ours, so the balance between the terms does not move with our batch."""
    reference_num_frames: int = 11
    """T of the release's normalisation: the SSIM term's per-sample sum counts the
    C = 3(T-1) channels of a clip of this many frames (the release's 11), not of ours, so the
    balance does not move with our clip length. Counted from a 2-frame clip (C = 3), SSIM
    weighs 10x less against the photometric mean than in the release, and a 2-frame MotionNet
    stayed at zero flow (synthetic EPE 0.849 after 1500 tiny steps, zero flow 0.855; 0.529
    with the 11-frame balance)."""
    border_fraction: float = 0.1
    """Border mask of the photometric and smoothness terms, a fraction of min(h, w) at each level."""
    use_lrn: bool = False
    """Compare LRN'd images as the release does (see `local_response_norm`). Off by
    default: the paper does not mention it and it changes the photometric scale."""
    eps: float = 1e-3
    """Charbonnier epsilon of both terms."""
    photometric: str = "charbonnier"
    """"charbonnier" (the paper) or "census" (UFlow's soft census distance, robust to
    brightness changes; see `census_distance`)."""
    census_patch_size: int = 7
    """Side of the census patch (odd)."""
    smoothness: str = "first_order"
    """"first_order" (the paper), "edge_aware_first" or "edge_aware_second" (UFlow: the
    differences weighted by `edge_weights` of the frame the flow starts from)."""
    edge_weight: float = 150.0
    """UFlow's edge constant in exp(-edge_weight * mean |image gradient|), frames in [0, 1]."""
    occlusion: str = "none"
    """"none" (the paper) or "forward_backward" (UnFlow's consistency check; needs the
    flows of the time-reversed clip, see `unsupervised_flow_loss`)."""
    occlusion_alpha1: float = 0.01
    """UnFlow's alpha1: the relative part of the forward-backward tolerance."""
    occlusion_alpha2: float = 0.5
    """UnFlow's alpha2: the constant part of the tolerance, in squared pixels of the level."""

    def __post_init__(self) -> None:
        lengths = {len(self.pixel_level_weights), len(self.smoothness_level_weights),
                   len(self.ssim_level_weights)}
        if len(lengths) != 1:
            raise ValueError(
                "pixel_level_weights, smoothness_level_weights and ssim_level_weights need "
                f"one value per flow level each; got lengths {sorted(lengths)}"
            )
        weights = (self.pixel_level_weights + self.smoothness_level_weights
                   + self.ssim_level_weights + (self.smoothness_weight, self.ssim_weight_scale,
                                                self.edge_weight, self.occlusion_alpha1,
                                                self.occlusion_alpha2))
        if min(weights) < 0:
            raise ValueError(f"loss weights and constants must be >= 0, got {weights}")
        if self.pixel_alpha <= 0 or self.smoothness_alpha <= 0 or self.eps <= 0:
            raise ValueError("pixel_alpha, smoothness_alpha and eps must be > 0")
        if not 0.0 <= self.border_fraction < 0.5:
            raise ValueError(f"border_fraction must be in [0, 0.5), got {self.border_fraction}")
        if self.reference_batch_size < 1:
            raise ValueError(f"reference_batch_size must be >= 1, got {self.reference_batch_size}")
        if self.reference_num_frames < 2:
            raise ValueError(f"reference_num_frames must be >= 2, got {self.reference_num_frames}")
        if self.census_patch_size < 1 or self.census_patch_size % 2 == 0:
            raise ValueError(f"census_patch_size must be odd and >= 1, got {self.census_patch_size}")
        for name, allowed in (("normalisation", NORMALISATIONS), ("photometric", PHOTOMETRIC_TERMS),
                              ("smoothness", SMOOTHNESS_TERMS), ("occlusion", OCCLUSION_MASKS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def num_levels(self) -> int:
        """Number of flow levels the weights describe (5 for MotionNet)."""
        return len(self.pixel_level_weights)

    @classmethod
    def pretraining(cls, **overrides) -> UnsupervisedLossConfig:
        """MotionNet pretraining: SSIM weights 0.16 ... 0.01, the release's batch of 16."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def finetuning(cls, **overrides) -> UnsupervisedLossConfig:
        """End-to-end fine-tuning, mode (c): SSIM weights ten times smaller, the release's
        batch of 8. Added to the mean cross-entropy with weight 1, this is the release's
        balance: photometric 1/8, smoothness 1/6, SSIM 0.48 ... 5.88 (224 crops, 11 frames)."""
        return dataclasses.replace(cls(ssim_weight_scale=0.1, reference_batch_size=8), **overrides)


def term_weights(config: UnsupervisedLossConfig, level: int, num_channels: int, num_windows: int) -> dict[str, float]:
    """What multiplies each plain per-level mean of `level` (0 = flow6) in the total.

    num_channels C = 3 (T-1) with T = reference_num_frames (`loss_channels`), the loss images
    per sample; num_windows = SSIM windows per channel at this level (`num_ssim_windows`).
    With N = reference_batch_size:
      release: pixel p_k / N, smooth lambda2 s_k (4/3) / N, ssim q w_k C W_k;
      mean:    the same times N (pixel 1, smoothness 4/3, SSIM 76.8 ... 940.8 for the
               defaults at 224 crops and 11 frames).
    """
    n = config.reference_batch_size
    per_batch = 1.0 / n if config.normalisation == "release" else 1.0
    return {
        "pixel": config.pixel_level_weights[level] * per_batch,
        "smooth": config.smoothness_weight * config.smoothness_level_weights[level] * (4.0 / 3.0) * per_batch,
        "ssim": config.ssim_weight_scale * config.ssim_level_weights[level] * num_channels * num_windows * n * per_batch,
    }


def loss_channels(config: UnsupervisedLossConfig) -> int:
    """C of the SSIM term's per-sample sum: the 3 (T-1) loss images of a clip of
    reference_num_frames, whatever our clip's length."""
    return 3 * (config.reference_num_frames - 1)


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


def _check_inputs(frames01: torch.Tensor, flows: list[torch.Tensor], num_levels: int, what: str = "flow") -> None:
    if frames01.dim() != 5 or frames01.shape[2] != 3:
        raise ValueError(f"expected frames (B, T, 3, H, W) in [0, 1], got {tuple(frames01.shape)}")
    b, t = frames01.shape[:2]
    if len(flows) != num_levels:
        raise ValueError(
            f"got {len(flows)} {what} levels but the loss config has weights for {num_levels}; "
            "pass all of MotionNet's outputs or set the *_level_weights to match"
        )
    for k, flow in enumerate(flows):
        if flow.dim() != 4 or flow.shape[0] != b or flow.shape[1] != 2 * (t - 1):
            raise ValueError(
                f"{what} level {k} has shape {tuple(flow.shape)}; expected ({b}, {2 * (t - 1)}, h, w) "
                f"for {t} frames"
            )


def _photometric(target: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor,
                 config: UnsupervisedLossConfig) -> torch.Tensor:
    """Mean photometric penalty over the elements `mask` keeps; images (n, 3, h, w)."""
    if config.photometric == "census":
        return masked_mean(robust_penalty(census_distance(target, warped, config.census_patch_size)), mask)
    return masked_mean(charbonnier(target - warped, config.pixel_alpha, config.pixel_beta, config.eps), mask)


def _smoothness(flow: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                config: UnsupervisedLossConfig) -> torch.Tensor:
    """Mean smoothness penalty of flow (n, 2, h, w); `image` is the frame the flow starts from."""
    edge_aware = config.smoothness != "first_order"
    return smoothness_loss(
        flow, config.smoothness_alpha, 1.0, config.eps,
        order=2 if config.smoothness == "edge_aware_second" else 1, mask=mask,
        image=image if edge_aware else None, edge_weight=config.edge_weight,
    )


def _level_terms(
    frames: torch.Tensor, raw: torch.Tensor, raw_bw: torch.Tensor | None, full_size: tuple[int, int],
    config: UnsupervisedLossConfig,
) -> dict[str, torch.Tensor]:
    """Plain means {pixel, smooth, ssim[, occluded]} at one level; frames (B, T, 3, H, W) detached."""
    b, t = frames.shape[:2]
    n, (h, w) = b * (t - 1), raw.shape[-2:]
    flow = split_flows(raw_to_pixels(raw, *full_size)).reshape(n, 2, h, w)
    level = _resize(frames.flatten(0, 1), (h, w)).reshape(b, t, 3, h, w)
    # All T-1 pairs in one warp call: frame i+1 sampled along flow i rebuilds frame i.
    target = level[:, :-1].reshape(n, 3, h, w)
    warped = backward_warp(level[:, 1:].reshape(n, 3, h, w), flow)
    border = border_mask(h, w, config.border_fraction, device=raw.device).to(raw.dtype)
    one_minus_ssim = 1.0 - ssim_map(warped, target)
    means = {"smooth": _smoothness(flow, target, border, config)}
    if raw_bw is None:
        means["pixel"] = _photometric(target, warped, border, config)
        means["ssim"] = one_minus_ssim.mean()
        return means
    with torch.no_grad():  # the mask steers the loss; no gradient flows through it
        flow_bw = split_flows(raw_to_pixels(raw_bw, *full_size)).reshape(n, 2, h, w)
        visible = forward_backward_visible(flow.detach(), flow_bw, config.occlusion_alpha1, config.occlusion_alpha2)
    means["pixel"] = _photometric(target, warped, border * visible, config)
    # Each SSIM window counts by its (Gaussian-weighted) visible fraction.
    means["ssim"] = (one_minus_ssim * window_means(visible)).mean()
    means["occluded"] = 1.0 - visible.mean()
    return means


def unsupervised_flow_loss(
    frames01: torch.Tensor,
    flows: list[torch.Tensor],
    config: UnsupervisedLossConfig | None = None,
    backward_flows: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The multi-scale unsupervised loss of MotionNet's raw outputs -> (total, terms).

    frames01 (B, T, 3, H, W) in [0, 1] (`h2s_dist.frames.denormalize` of the network
    input); no gradient flows into them. flows: MotionNet's raw outputs, coarsest first,
    each (B, 2*(T-1), h_k, w_k) in raw units (flow / 20 in full-resolution pixels).
    backward_flows: with occlusion "forward_backward" only, MotionNet's raw outputs for the
    time-reversed clip, `model(clip.flip(1))`, as they come (the index mapping is in
    `h2s_dist.warp.backward_flows_from_reversed_clip`); no gradient flows into them.
    Computed in fp32 with autocast off, whatever the inputs' dtype.
    total: 0-dim fp32 tensor with gradient to the flows. terms: detached 0-dim tensors,
    "pixel", "smooth", "ssim" = the weighted contributions (they sum to total), and
    "pixel/flow6", "smooth/flow6", "ssim/flow6", ... = the plain per-level means
    (and "occluded/flow6", ... = the occluded fraction, with the occlusion mask).
    """
    config = config or UnsupervisedLossConfig()
    _check_inputs(frames01, flows, config.num_levels)
    if (config.occlusion == "forward_backward") != (backward_flows is not None):
        raise ValueError(
            "occlusion 'forward_backward' needs backward_flows = MotionNet's outputs for the "
            "time-reversed clip, and no other setting uses them; got occlusion "
            f"{config.occlusion!r} with backward_flows {'given' if backward_flows is not None else 'missing'}"
        )
    if backward_flows is not None:
        _check_inputs(frames01, backward_flows, config.num_levels, what="backward flow")
    with torch.autocast(frames01.device.type, enabled=False):
        frames = frames01.detach().float()
        if config.use_lrn:
            frames = local_response_norm(frames)
        flows = [f.float() for f in flows]
        backward = ([backward_flows_from_reversed_clip(f.detach().float()) for f in backward_flows]
                    if backward_flows is not None else [None] * len(flows))
        return _total(frames, flows, backward, config)


def _total(
    frames: torch.Tensor, flows: list[torch.Tensor], backward: list[torch.Tensor | None],
    config: UnsupervisedLossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    full_size = (frames.shape[-2], frames.shape[-1])
    num_channels = loss_channels(config)
    parts: dict[str, list[torch.Tensor]] = {"pixel": [], "smooth": [], "ssim": []}
    terms: dict[str, torch.Tensor] = {}
    for k, (name, raw, raw_bw) in enumerate(zip(_level_names(len(flows)), flows, backward)):
        means = _level_terms(frames, raw, raw_bw, full_size, config)
        weights = term_weights(config, k, num_channels, num_ssim_windows(*raw.shape[-2:]))
        for key, weight in weights.items():
            parts[key].append(weight * means[key])
        terms.update({f"{key}/{name}": value.detach() for key, value in means.items()})
    sums = {key: torch.stack(values).sum() for key, values in parts.items()}
    total = sums["pixel"] + sums["smooth"] + sums["ssim"]
    terms.update({key: value.detach() for key, value in sums.items()})
    return total, terms


def proxy_flow_loss(flows: list[torch.Tensor], proxy: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """End-point error of MotionNet's flow against a proxy flow (paper Table 4: cached TV-L1 flow
    as a supervised proxy) -> (total, terms).

    flows: MotionNet's raw outputs, coarsest first, each (B, 2(T-1), h_k, w_k) = flow / 20 in
    full-resolution pixels. proxy: (B, 2(T-1), H, W) full-resolution pixels, u0, v0, u1, ...
    (flow i maps frame i to frame i+1, as MotionNet's). At each level the proxy is
    area-averaged to the level's size (staying in full-resolution pixels, the unit of raw x 20)
    and the EPE sqrt(du^2 + dv^2) averaged over pixels, flows and samples; total = the mean of
    the levels' EPEs (px). terms: "proxy_epe" (= total) and "proxy_epe/flow6", ... (detached).
    No gradient flows into the proxy; computed in fp32 with autocast off."""
    if proxy.dim() != 4 or proxy.shape[1] != flows[-1].shape[1]:
        raise ValueError(f"proxy flow must be (B, {flows[-1].shape[1]}, H, W) like MotionNet's, got {tuple(proxy.shape)}")
    with torch.autocast(proxy.device.type, enabled=False):
        target = proxy.detach().float()
        levels = []
        for raw in flows:
            level_target = F.interpolate(target, size=raw.shape[-2:], mode="area")
            diff = split_flows(raw.float() * RAW_FLOW_SCALE - level_target)  # (B, T-1, 2, h, w)
            levels.append(torch.sqrt(diff.square().sum(dim=2) + 1e-12).mean())  # eps: a finite gradient at 0
        total = torch.stack(levels).mean()
    terms = {f"proxy_epe/{name}": value.detach() for name, value in zip(_level_names(len(flows)), levels)}
    terms["proxy_epe"] = total.detach()
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of class scores (computed in fp32), with the terms every classifier
    stage logs: `loss/action` and `train/top1` (the micro-batch's top-1 accuracy), as detached
    0-dim tensors on the scores' device (read by the loop at log steps only)."""
    loss = F.cross_entropy(scores.float(), labels, label_smoothing=label_smoothing)
    top1 = (scores.argmax(1) == labels).float().mean()
    return loss, {"loss/action": loss.detach(), "train/top1": top1}
