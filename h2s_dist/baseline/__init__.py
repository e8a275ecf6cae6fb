"""The TV-L1 two-stage baseline the paper compares against: precomputed Dual TV-L1 flow
(OpenCV, the `baseline` extra) fed to a 20-channel temporal VGG16.

    tvl1.py                            flow of a frame pair / window, 8-bit quantisation
    h2s_dist.data.flow_shards          flow datasets (write, train and test readers)
    h2s_dist.train.stages.tvl1_flows   stage: frames -> flow dataset (Ray tasks)
    h2s_dist.train.stages.temporal_flows  stage: temporal VGG16 on the flows; test scoring
"""

from h2s_dist.baseline.tvl1 import (
    DEFAULT_BOUND_PX,
    TVL1Params,
    dequantize_flow,
    flip_quantized,
    quantize_flow,
    tvl1_flow,
    window_flows,
)

__all__ = [
    "DEFAULT_BOUND_PX",
    "TVL1Params",
    "dequantize_flow",
    "flip_quantized",
    "quantize_flow",
    "tvl1_flow",
    "window_flows",
]
