"""Frame tensor conventions shared by the data readers, the models and the losses.

Clips travel as float tensors (B, T, 3, H, W), RGB, normalised as the paper's release
does it: (pixel - mean) / 255 with the per-channel mean (R, G, B) = (123, 117, 104)
(the release writes it in BGR order as 104, 117, 123). The unsupervised losses work on
frames in [0, 1] instead (their constants assume that range), so the loop calls
`denormalize` before computing them.
"""

import torch

MEAN_RGB_255 = (123.0, 117.0, 104.0)


def _mean(like: torch.Tensor) -> torch.Tensor:
    """The mean as a (3, 1, 1) tensor in [0, 1] units on `like`'s device and dtype."""
    return torch.tensor(MEAN_RGB_255, device=like.device, dtype=like.dtype).view(3, 1, 1) / 255.0


def normalize(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., 3, H, W) in 0..255 -> float32 network input (x - mean) / 255."""
    x = frames_uint8.float() / 255.0
    return x - _mean(x)


def denormalize(frames: torch.Tensor) -> torch.Tensor:
    """Network input (..., 3, H, W) -> frames in [0, 1], the range the losses expect."""
    return frames + _mean(frames)
