"""The paper's networks in plain torch: MotionNet, VGG16, the stacked temporal stream
and late fusion. Imports torch only (no ray, mlflow, fsspec).

Names are loaded on first use, so `h2s_dist.models.limits` (what the networks accept,
pure Python) can be read at spec validation without importing torch.
"""

import importlib

_WHERE = {
    "fuse_scores": "fusion",
    "LEVEL_MULTIPLIERS": "motionnet",
    "MotionNet": "motionnet",
    "MotionNetConfig": "motionnet",
    "build_motionnet": "motionnet",
    "full_resolution_flow": "motionnet",
    "FlowNormalize": "stacked",
    "StackedOutput": "stacked",
    "StackedTemporalStream": "stacked",
    "FinetuneMode": "limits",
    "VGG16": "vgg",
    "VGG16Config": "vgg",
    "VGG16_CLASSIFIER": "vgg",
    "build_vgg16": "vgg",
    "cross_modality_conv1": "vgg",
    "temporal_from_rgb": "vgg",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'h2s_dist.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"h2s_dist.models.{_WHERE[name]}"), name)
