"""Hand-built flow cases the flow tests share: a random frame moved by a known integer shift."""

from __future__ import annotations

import numpy as np

SHIFT = (2.0, -1.0)  # (u right, v down) px: frame2(x + SHIFT) = frame1(x)
H, W = 20, 24


def shifted_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """frame1, frame2 uint8 (H, W, 3) where frame2 is frame1 moved by SHIFT (integer, wrap-around)."""
    frame1 = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    frame2 = np.roll(frame1, (int(SHIFT[1]), int(SHIFT[0])), axis=(0, 1))
    return frame1, frame2


def shift_flow() -> np.ndarray:
    """The true flow of `shifted_pair`: SHIFT everywhere, (H, W, 2) float32."""
    return np.broadcast_to(np.array(SHIFT, np.float32), (H, W, 2)).copy()
