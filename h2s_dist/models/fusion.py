"""Late fusion of the spatial and temporal streams' class scores.

Two rules:
  - "weighted_sum": w_s * spatial + w_t * temporal on pre-softmax scores;
  - "release": as the released evaluation does it: softmax per stream, negatives set
    to 0, L1-normalised per row, then the weighted sum (spatial + 1.5 x temporal).
The predicted class is the argmax of the result either way.
"""

from __future__ import annotations

import torch

FUSION_RULES = ("weighted_sum", "release")


def _release_normalize(scores: torch.Tensor) -> torch.Tensor:
    """Softmax, clamp >= 0, L1-normalise over classes (the clamp and L1 are no-ops after
    a softmax up to rounding; kept because the release does them)."""
    p = torch.softmax(scores, dim=-1).clamp_min(0.0)
    return p / p.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


def fuse_scores(
    spatial_scores: torch.Tensor,
    temporal_scores: torch.Tensor,
    weights: tuple[float, float] = (1.0, 1.5),
    rule: str = "weighted_sum",
) -> torch.Tensor:
    """(..., num_classes) spatial and temporal pre-softmax scores -> fused (..., num_classes)."""
    if spatial_scores.shape != temporal_scores.shape:
        raise ValueError(
            f"spatial {tuple(spatial_scores.shape)} and temporal {tuple(temporal_scores.shape)} "
            "scores must have the same shape (same videos, same classes)"
        )
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; choose one of {FUSION_RULES}")
    w_spatial, w_temporal = weights
    if rule == "release":
        spatial_scores = _release_normalize(spatial_scores)
        temporal_scores = _release_normalize(temporal_scores)
    return w_spatial * spatial_scores + w_temporal * temporal_scores
