"""MotionNet as the flow source of a two-stage pipeline (paper Table 2, "MotionNet (2 frames) +
temporal stream, flows cached"): a trained MotionNet's flow of every frame pair of a video,
quantised as TV-L1's (h2s_dist.baseline.tvl1), so the tvl1_flows stage writes the same flow
shards and train_temporal_flows / evaluate read them unchanged.

    model = load_motionnet(MotionNetSpec(flavour="tiny").model_dump(), uri, num_frames=2)
    q = video_flows(model, frames, bound=20.0)     # (T-1, H, W, 2) uint8, flow i: frame i -> i+1

A T-frame network covers a video with consecutive windows of T frames that share their end
frames (starts 0, T-1, 2(T-1), ..., the last one aligned with the video's end); each window
gives T-1 of the video's flows. Frames are edge-padded to multiples of 32 and the
full-resolution flow cropped back (h2s_dist.train.flow_eval.pad_to_multiple, MotionNet's one
padding).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from h2s_dist.baseline.tvl1 import quantize_flow


def window_starts(num_frames: int, window: int) -> list[int]:
    """Starts of the windows of `window` frames covering frames 0..num_frames-1 (pairs i, i+1
    for every i < num_frames - 1): step window - 1, the last start num_frames - window.
    A video shorter than a window gets start 0 (its frames are padded by repeating the last)."""
    if window < 2:
        raise ValueError(f"a MotionNet window needs at least 2 frames, got {window}")
    last = max(num_frames - window, 0)
    starts = list(range(0, last + 1, window - 1))
    if starts[-1] != last:
        starts.append(last)
    return starts


@torch.no_grad()
def video_flows(model: torch.nn.Module, frames: np.ndarray, bound: float, batch_windows: int = 8) -> np.ndarray:
    """frames (T, H, W, 3) uint8 RGB -> (T-1, H, W, 2) uint8, MotionNet's flow i (frame i -> i+1)
    quantised with `bound` as TV-L1 flow is. `model` is a MotionNet in eval mode."""
    from h2s_dist.data.transforms import pad_to_length
    from h2s_dist.frames import normalize
    from h2s_dist.models import full_resolution_flow
    from h2s_dist.train.flow_eval import pad_to_multiple

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need at least 2 frames (T, H, W, 3), got shape {frames.shape}")
    window, (num_frames, height, width) = model.config.num_frames, frames.shape[:3]
    padded = pad_to_multiple(pad_to_length(frames, max(num_frames, window)))
    device = next(model.parameters()).device
    flows = np.empty((num_frames - 1, height, width, 2), np.float32)
    starts = window_starts(num_frames, window)
    for first in range(0, len(starts), batch_windows):
        chunk = starts[first:first + batch_windows]
        clips = np.stack([padded[s:s + window] for s in chunk])  # (B, T, Hp, Wp, 3)
        x = normalize(torch.from_numpy(clips).permute(0, 1, 4, 2, 3).to(device))
        full = full_resolution_flow(model(x)[-1].float(), padded.shape[1:3])  # (B, T-1, 2, Hp, Wp)
        out = full[..., :height, :width].permute(0, 1, 3, 4, 2).cpu().numpy()
        for start, window_flows in zip(chunk, out):
            count = min(window - 1, num_frames - 1 - start)
            flows[start:start + count] = window_flows[:count]
    return quantize_flow(flows, bound)


@lru_cache(maxsize=2)
def _cached_motionnet(spec_items: tuple, weights: str, num_frames: int) -> torch.nn.Module:
    from h2s_dist.specs.common import MotionNetSpec
    from h2s_dist.train.builders import build_motionnet_from

    model = build_motionnet_from(MotionNetSpec(**dict(spec_items)), num_frames, weights)
    return model.eval()


def load_motionnet(spec: dict[str, Any], weights: str, num_frames: int) -> torch.nn.Module:
    """The MotionNet `spec` (a MotionNetSpec as a dict) describes, with `weights`, in eval mode;
    built once per process (a Ray task's worker reuses it across chunks)."""
    return _cached_motionnet(tuple(sorted(spec.items())), weights, num_frames)
