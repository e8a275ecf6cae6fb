"""TV-L1 optical flow for the two-stage baseline, and its 8-bit storage.

Flows here are numpy arrays (..., H, W, 2), channel 0 = u (right), 1 = v (down).

Direction: `tvl1_flow(prev, next)` is OpenCV's Dual TV-L1 `calc(prev, next)`, which
gives prev(x) ~ next(x + flow(x)): flow i maps frame i to frame i+1 and frame i+1
sampled at x + flow rebuilds frame i, MotionNet's convention (`warp.backward_warp`).

Quantisation (the standard two-stream practice of storing flow as 8-bit images):
    q = round((clip(f, -bound, bound) + bound) * 255 / (2 * bound))     uint8
so -bound, 0, +bound px map to 0, 127.5 (stored 128), 255. With bound = 20 this is
exactly the scale of the stacked stream's `FlowNormalize` (x20 -> clamp [-20, 20] ->
+20 -> x6.375 -> -128): the temporal VGG16 input is `q - 128` either way, up to the
rounding of q (at most 0.5, i.e. 20/255 px). One step of q is 40/255 = 0.157 px.

A horizontal flip mirrors x and negates u; on stored flow that is u -> 255 - u, exact:
dequantize(255 - q) = -dequantize(q).

OpenCV is an optional extra (`pip install h2s-dist[baseline]`); it is imported on first
use, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BOUND_PX = 20.0
FLOW_MEAN = 128.0  # what the temporal VGG16 input subtracts from q (FlowNormalize's -128)


@dataclass(frozen=True)
class TVL1Params:
    """Dual TV-L1 settings; the defaults are OpenCV's, which the two-stream releases used.

    Fewer scales, warps or iterations trade accuracy for speed (tests use `fast()`)."""

    tau: float = 0.25
    """Time step of the numerical scheme."""
    lambda_: float = 0.15
    """Weight of the data term (smaller = smoother flow)."""
    theta: float = 0.3
    """Coupling of the two sub-problems."""
    num_scales: int = 5
    """Levels of the image pyramid."""
    scale_step: float = 0.8
    """Size ratio between pyramid levels."""
    num_warps: int = 5
    """Warpings per pyramid level."""
    epsilon: float = 0.01
    """Stopping threshold of the inner iterations."""
    inner_iterations: int = 30
    """Inner iterations per warping."""
    outer_iterations: int = 10
    """Outer iterations per warping."""
    median_filtering: int = 5
    """Median filter size applied to the flow after each warping (1 = off)."""

    @classmethod
    def fast(cls) -> TVL1Params:
        """Several times faster, less accurate: for tests and CPU quickstarts."""
        return cls(num_scales=2, num_warps=2, inner_iterations=10, outer_iterations=3)


DEFAULT_PARAMS = TVL1Params()
_SOLVERS: dict[tuple[int, TVL1Params], Any] = {}  # one solver per (process, parameters)


def _cv2():
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "TV-L1 flow needs OpenCV with the contrib modules: install the `baseline` extra "
            "(pip install 'h2s-dist[baseline]', i.e. opencv-contrib-python-headless)"
        ) from err
    if not hasattr(cv2, "optflow"):
        raise ImportError(
            "this OpenCV has no cv2.optflow (contrib) module: replace opencv-python by "
            "opencv-contrib-python-headless (the `baseline` extra)"
        )
    return cv2


def _solver(params: TVL1Params):
    """The Dual TV-L1 solver of this process for `params`, created once.

    Keyed by pid: a forked worker builds its own instead of sharing the parent's buffers."""
    key = (os.getpid(), params)
    if key not in _SOLVERS:
        _SOLVERS[key] = _cv2().optflow.DualTVL1OpticalFlow_create(
            tau=params.tau, lambda_=params.lambda_, theta=params.theta, nscales=params.num_scales,
            warps=params.num_warps, epsilon=params.epsilon, innnerIterations=params.inner_iterations,
            outerIterations=params.outer_iterations, scaleStep=params.scale_step,
            medianFiltering=params.median_filtering,
        )
    return _SOLVERS[key]


def set_num_threads(num_threads: int) -> None:
    """OpenCV's worker threads in this process (1 inside a one-CPU Ray task)."""
    _cv2().setNumThreads(int(num_threads))


def to_gray(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB or (H, W) uint8 -> (H, W) uint8 luma (ITU-R 601, OpenCV's)."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[-1] != 3):
        raise ValueError(f"need a uint8 frame (H, W, 3) RGB or (H, W) gray, got {frame.dtype} {frame.shape}")
    if frame.ndim == 2:
        return frame
    return _cv2().cvtColor(np.ascontiguousarray(frame), _cv2().COLOR_RGB2GRAY)


def tvl1_flow(prev: np.ndarray, next: np.ndarray, params: TVL1Params = DEFAULT_PARAMS) -> np.ndarray:  # noqa: A002
    """Dual TV-L1 flow from `prev` to `next` -> (H, W, 2) float32 pixels, u right, v down.

    prev, next: (H, W, 3) uint8 RGB or (H, W) uint8, computed on grayscale.
    prev(x) ~ next(x + flow(x)) (see the module docstring)."""
    a, b = to_gray(prev), to_gray(next)
    if a.shape != b.shape:
        raise ValueError(f"frames differ in size: {a.shape} vs {b.shape}")
    return _solver(params).calc(a, b, None).astype(np.float32, copy=False)


def quantize_flow(flow: np.ndarray, bound: float = DEFAULT_BOUND_PX) -> np.ndarray:
    """Flow in pixels (any shape) -> uint8: clip to [-bound, bound], map linearly to 0..255."""
    if bound <= 0:
        raise ValueError(f"bound must be > 0 pixels, got {bound}")
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.rint(scaled).astype(np.uint8)


def dequantize_flow(q: np.ndarray, bound: float = DEFAULT_BOUND_PX) -> np.ndarray:
    """uint8 from `quantize_flow` -> float32 pixels (q * 2 bound / 255 - bound)."""
    return (np.asarray(q, np.float32) * (2.0 * bound / 255.0) - bound).astype(np.float32)


def flip_quantized(q: np.ndarray) -> np.ndarray:
    """Horizontal flip of quantised flow (..., H, W, 2): mirror x and negate u (u -> 255 - u)."""
    out = np.array(q[..., ::-1, :], copy=True)
    out[..., 0] = 255 - out[..., 0]
    return out


def window_flows(
    frames: np.ndarray, bound: float = DEFAULT_BOUND_PX, params: TVL1Params = DEFAULT_PARAMS
) -> np.ndarray:
    """frames (T, H, W, 3) uint8 RGB -> (T-1, H, W, 2) uint8, quantised TV-L1 flow i: frame i -> i+1."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need at least 2 frames (T, H, W, 3), got shape {frames.shape}")
    gray = [to_gray(f) for f in frames]
    return np.stack([quantize_flow(tvl1_flow(a, b, params), bound) for a, b in zip(gray[:-1], gray[1:])])
