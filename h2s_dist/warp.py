"""Flow geometry for the unsupervised losses: backward warping, raw-to-pixel units, masks,
forward-backward occlusion.

Conventions (shared with `h2s_dist.models.motionnet` and `h2s_dist.losses`):
  - A flow is (B, 2, H, W) in pixels; channel 0 = u (right, +x, columns), channel 1 =
    v (down, +y, rows).
  - Flow i maps frame i to frame i+1 in the backward-warping sense: sampling frame i+1
    at (x + u, y + v) reconstructs frame i. An object moving one pixel to the right
    between the frames therefore has u = +1.
  - MotionNet's raw outputs are flow / RAW_FLOW_SCALE in full-resolution pixels at every
    level, (B, 2N, h, w) with channels u0, v0, u1, v1, ...
  - A backward flow maps frame i+1 to frame i (sampling frame i at x + flow rebuilds
    frame i+1); MotionNet gives them for the time-reversed clip (see
    `backward_flows_from_reversed_clip`).

Imports torch only. Tests: `python -m pytest tests/unit/test_warp.py -q`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Raw network outputs are flow / RAW_FLOW_SCALE in full-resolution pixels.
RAW_FLOW_SCALE = 20.0


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `image` at (x + u, y + v): rebuilds frame t from frame t+1 and flow t->t+1.

    image (B, C, H, W); flow (B, 2, H, W) in pixels of this resolution, channel 0 = u
    (right), 1 = v (down). Returns (B, C, H, W). Bilinear interpolation; samples that
    fall outside the image read zeros (a partly outside sample blends with zero).
    Differentiable in both `image` and `flow`.
    """
    if image.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"backward_warp expects image (B, C, H, W) and flow (B, 2, H, W), got "
            f"{tuple(image.shape)} and {tuple(flow.shape)}"
        )
    if image.shape[0] != flow.shape[0] or image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and flow {tuple(flow.shape)} must share batch and "
            "spatial size; resize the image to the flow's level first"
        )
    _, _, h, w = image.shape
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    # align_corners=False puts pixel centre i at (2i + 1) / size - 1. Normalising the
    # same way makes integer shifts land exactly on pixel centres and, unlike
    # align_corners=True, stays well defined for 1-pixel-wide levels.
    gx = (2.0 * (xs + flow[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys + flow[:, 1]) + 1.0) / h - 1.0
    grid = torch.stack((gx, gy), dim=-1)  # (B, H, W, 2), x first as grid_sample wants
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def raw_to_pixels(
    raw: torch.Tensor, full_height: int, full_width: int | None = None
) -> torch.Tensor:
    """Raw flow (B, 2N, h, w) -> the same flow in pixels of its own (h, w) resolution.

    Raw units are flow / RAW_FLOW_SCALE in full-resolution pixels, so the multiplier is
    RAW_FLOW_SCALE * h / full_height (0.625, 1.25, 2.5, 5, 10 for flow6 ... flow2 of a
    224 input). With `full_width` given, u (even channels) uses w / full_width and v (odd
    channels) h / full_height, which only differ for non-uniform resizing.
    """
    if raw.dim() != 4 or raw.shape[1] % 2:
        raise ValueError(f"raw_to_pixels expects raw flow (B, 2N, h, w), got {tuple(raw.shape)}")
    h, w = raw.shape[-2:]
    scale_v = RAW_FLOW_SCALE * h / full_height
    if full_width is None:
        return raw * scale_v
    scale_u = RAW_FLOW_SCALE * w / full_width
    if scale_u == scale_v:  # the usual case; skips building a per-channel tensor
        return raw * scale_v
    scales = torch.tensor([scale_u, scale_v], device=raw.device, dtype=raw.dtype)
    return raw * scales.repeat(raw.shape[1] // 2).view(1, -1, 1, 1)


def split_flows(raw: torch.Tensor) -> torch.Tensor:
    """(B, 2N, h, w) with channels u0, v0, u1, v1, ... -> (B, N, 2, h, w); a view."""
    if raw.dim() != 4 or raw.shape[1] % 2:
        raise ValueError(f"split_flows expects (B, 2N, h, w), got {tuple(raw.shape)}")
    b, c, h, w = raw.shape
    return raw.view(b, c // 2, 2, h, w)


def border_width(height: int, width: int, fraction: float = 0.1) -> int:
    """Border ignored by the photometric loss: round(fraction * min(H, W)), halves up
    (the release's C `round`): 1, 1, 3, 6, 11 pixels at 7, 14, 28, 56, 112."""
    return int(fraction * min(height, width) + 0.5)


def border_mask(
    height: int,
    width: int,
    fraction: float = 0.1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(H, W) float mask: 1 inside, 0 on a border of `border_width` pixels on all sides.

    Pixels near the border have no counterpart in the next frame when the scene moves,
    so their photometric error says nothing about the flow."""
    b = border_width(height, width, fraction)
    if 2 * b >= min(height, width):
        raise ValueError(
            f"border fraction {fraction} leaves no valid pixel in a {height}x{width} level; "
            "use a fraction below 0.5 or a larger input"
        )
    mask = torch.zeros(height, width, device=device)
    mask[b : height - b, b : width - b] = 1.0
    return mask


def backward_flows_from_reversed_clip(raw_reversed: torch.Tensor) -> torch.Tensor:
    """MotionNet's raw flows for the time-reversed clip -> the backward flows of the
    original pairs, (B, 2N, h, w) -> (B, 2N, h, w), channels u0, v0, u1, v1, ...

    Reversed frame j is original frame T-1-j (N = T-1 pairs), so reversed flow j maps
    reversed frame j to j+1 = original frame T-1-j to T-2-j. Backward flow i must map
    original frame i+1 to frame i (sampling frame i at x + flow rebuilds frame i+1):
    that is reversed flow j = T-2-i = N-1-i, i.e. the pairs in reverse order."""
    b, c, h, w = raw_reversed.shape
    return split_flows(raw_reversed).flip(1).reshape(b, c, h, w)


def forward_backward_visible(
    flow_fw: torch.Tensor, flow_bw: torch.Tensor, alpha1: float = 0.01, alpha2: float = 0.5
) -> torch.Tensor:
    """UnFlow's occlusion test: (B, 1, H, W) float, 1 = visible, 0 = occluded.

    flow_fw (B, 2, H, W) maps frame t to t+1, flow_bw maps frame t+1 to t, both in pixels
    of this resolution (the conventions above). Following the forward flow and then the
    backward flow from where it lands should come back: with b = backward_warp(flow_bw,
    flow_fw), a pixel is occluded where
        |flow_fw + b|^2 > alpha1 (|flow_fw|^2 + |b|^2) + alpha2
    (alpha2 in squared pixels). A forward flow leaving the image reads b = 0 there, so it
    counts as occluded once |flow_fw|^2 (1 - alpha1) > alpha2."""
    bw_at_target = backward_warp(flow_bw, flow_fw)
    mismatch = (flow_fw + bw_at_target).pow(2).sum(1, keepdim=True)
    bound = alpha1 * (flow_fw.pow(2).sum(1, keepdim=True) + bw_at_target.pow(2).sum(1, keepdim=True)) + alpha2
    return (mismatch <= bound).to(flow_fw.dtype)
