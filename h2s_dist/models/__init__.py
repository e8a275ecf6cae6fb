"""The paper's networks in plain torch: MotionNet, VGG16, the stacked temporal stream
and late fusion. Imports torch only (no ray, mlflow, fsspec)."""

from h2s_dist.models.fusion import fuse_scores
from h2s_dist.models.motionnet import (
    LEVEL_MULTIPLIERS,
    MotionNet,
    MotionNetConfig,
    build_motionnet,
    full_resolution_flow,
)
from h2s_dist.models.stacked import FinetuneMode, FlowNormalize, StackedOutput, StackedTemporalStream
from h2s_dist.models.vgg import VGG16, VGG16Config, build_vgg16, cross_modality_conv1, temporal_from_rgb

__all__ = [
    "LEVEL_MULTIPLIERS",
    "MotionNet",
    "MotionNetConfig",
    "build_motionnet",
    "full_resolution_flow",
    "VGG16",
    "VGG16Config",
    "build_vgg16",
    "cross_modality_conv1",
    "temporal_from_rgb",
    "FlowNormalize",
    "FinetuneMode",
    "StackedTemporalStream",
    "StackedOutput",
    "fuse_scores",
]
