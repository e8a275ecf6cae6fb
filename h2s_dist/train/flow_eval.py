"""MotionNet's flow against ground truth: end-point error on pairs of h2s_dist.data.flow_sets.

    flow = motionnet_flow(model, pair)                     # (H, W, 2) px, frame1 -> frame2
    metrics = flow_epe(model, {"synthetic": pairs})        # {"val/epe": ..., "val/epe/synthetic": ...}

A T-frame network is run on the pair inside its real T-frame window where the set has one
(synthetic videos), else on the bare pair with frame2 repeated (f1, f2, ..., f2) and flow 0
scored. Frames are edge-padded to a multiple of 32 (bottom/right) and the full-resolution
flow (flow2 upsampled x2) is cropped back. Used by pretraining's validation (`val/epe`) and by
bench/flow_quality.py, so both score flow the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from h2s_dist.data.flow_io import average_epe
from h2s_dist.data.flow_sets import FlowPair
from h2s_dist.frames import normalize
from h2s_dist.models import full_resolution_flow
from h2s_dist.models.limits import MOTIONNET_SIZE_MULTIPLE


def pad_to_multiple(frames: np.ndarray, multiple: int = MOTIONNET_SIZE_MULTIPLE) -> np.ndarray:
    """(..., H, W, C) -> edge-padded at the bottom and right to multiples of `multiple`."""
    h, w = frames.shape[-3:-1]
    pad_h, pad_w = -h % multiple, -w % multiple
    widths = [(0, 0)] * (frames.ndim - 3) + [(0, pad_h), (0, pad_w), (0, 0)]
    return np.pad(frames, widths, mode="edge") if pad_h or pad_w else frames


def motionnet_window(pair: FlowPair, num_frames: int) -> tuple[np.ndarray, int]:
    """(T frames for a T-frame MotionNet, index of the pair's flow among its T-1 flows):
    the real frames around the pair when `pair.window` has enough, else the pair padded by
    repeating frame2 (flow 0 scored)."""
    window = pair.window
    if window is not None and len(window) >= num_frames:
        start = min(max(pair.window_index - (num_frames - 1) // 2, 0), len(window) - num_frames)
        return window[start:start + num_frames], pair.window_index - start
    return np.stack([pair.frame1] + [pair.frame2] * (num_frames - 1)), 0


@torch.no_grad()
def motionnet_flow(model: torch.nn.Module, pair: FlowPair) -> np.ndarray:
    """`model`'s flow of `pair` (H, W, 2) float32 px, frame1 -> frame2; the model is left as it was."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        h, w = pair.frame1.shape[:2]
        frames, index = motionnet_window(pair, model.config.num_frames)
        padded = pad_to_multiple(frames)
        x = normalize(torch.from_numpy(np.ascontiguousarray(padded)).permute(0, 3, 1, 2).to(device))[None]
        flow2 = model(x)[-1].float()
        flow = full_resolution_flow(flow2, padded.shape[1:3])[0, index]  # (2, Hp, Wp)
        return flow[:, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    finally:
        model.train(was_training)


def flow_epe(model: torch.nn.Module, sets: Mapping[str, Sequence[FlowPair]], prefix: str = "val/epe") -> dict[str, float]:
    """{prefix/SET: mean over the set's pairs of the pair's average EPE (valid pixels), and
    prefix: the mean over sets} for `model` (a MotionNet)."""
    per_set = {
        name: float(np.mean([average_epe(motionnet_flow(model, pair), pair.flow, pair.valid) for pair in pairs]))
        for name, pairs in sets.items() if pairs
    }
    metrics = {f"{prefix}/{name}": value for name, value in per_set.items()}
    if per_set:
        metrics[prefix] = float(np.mean(list(per_set.values())))
    return metrics
