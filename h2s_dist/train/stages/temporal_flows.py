"""Stage `train_temporal_flows`: the TV-L1 baseline's temporal VGG16, trained on cached flows.

Input: a flow dataset (stage `tvl1_flows`): stacks of 2 (clip_len_frames - 1) = 20
channels u0, v0, ..., u9, v9 at q - 128, the scale the stacked stream's FlowNormalize
feeds the same VGG16. Output weights `tvl1_temporal`. Defaults are the recipe of the
stacked stream's VGG16 (SGD 1e-3, biases x2, x0.1 at 5000 and 9500 of 16000 steps,
effective batch 128), since PAPER.md gives none for the baseline.
Test-time scoring (evaluate stage) lives in h2s_dist.train.scoring: `tvl1_eval_scores`
(cached flows), `tvl1_video_scores` (TV-L1 on the fly); the stream is `tvl1` in h2s_dist.train.streams.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from h2s_dist.data import flow_shards
from h2s_dist.data.flow_io import flow_to_color
from h2s_dist.data.manifest import read_classes
from h2s_dist.losses import action_loss
from h2s_dist.train.loop import split_bias_groups
from h2s_dist.specs.common import OptimSpec
from h2s_dist.specs.training import TemporalFlowsSpec
from h2s_dist.train.builders import build_temporal_vgg, flow_stack_channels
from h2s_dist.train.task import StreamTask, labelled_row, run_training


class TemporalFlowsTask(StreamTask):
    stream_cls = flow_shards.FlowTrainStream

    def __init__(self, spec: TemporalFlowsSpec):
        self.spec = spec
        self.num_classes = len(read_classes(spec.flows))
        self.bound = float(flow_shards.read_flow_info(spec.flows)["bound"])
        self.in_channels = flow_stack_channels(spec.data.clip_len_frames)

    def build_model(self) -> torch.nn.Module:
        spec = self.spec
        return build_temporal_vgg(spec.vgg_flavour, self.num_classes, self.in_channels, spec.vgg_weights,
                                  spec.vgg_rgb_weights)

    def param_groups(self, model, optim: OptimSpec) -> list[dict[str, Any]]:
        return split_bias_groups(model.named_parameters(), optim.lr, optim.bias_lr_multiplier, "vgg")

    @property
    def dataset_uri(self) -> str:
        return self.spec.flows

    def loss(self, model, batch, device):
        flows, labels = self.network_input(batch[0], device), batch[1].to(device, non_blocking=True)
        return action_loss(model(flows), labels, self.spec.label_smoothing)

    def pictures(self, model, batch, device) -> dict[str, np.ndarray]:
        return {"flows": flow_input_picture(self.network_input(batch[0][:1], device)[0], self.bound)}

    def final_weights(self, model) -> dict[str, dict[str, torch.Tensor]]:
        return {"tvl1_temporal": model.state_dict()}


def flow_input_picture(stacked: torch.Tensor, bound: float) -> np.ndarray:
    """Network input (2L, h, w) at q - 128 -> the Middlebury colours of its first flow field
    (dequantised to pixels), saturation at `bound` px, as a labelled tile (task.labelled_row)."""
    q = (stacked[:2].float() + flow_shards.FLOW_MEAN).permute(1, 2, 0).cpu().numpy()
    flow = q * (2.0 * bound / 255.0) - bound
    return labelled_row([flow_to_color(flow, max_flow=bound)], [f"input flow u0, v0 (saturates at {bound:g} px)"])


def run(spec: TemporalFlowsSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    return run_training(spec, TemporalFlowsTask(spec), session, tracker, output_uri)
