"""Stage `pretrain_motionnet`: MotionNet learns optical flow without labels.

The loss is the paper's multi-scale unsupervised loss (photometric Charbonnier +
smoothness + SSIM) of each frame rebuilt by warping its successor. Any ingested dataset
works, labeled or not: labels are ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from h2s_dist import frames as frame_conv
from h2s_dist.losses import proxy_flow_loss, unsupervised_flow_loss
from h2s_dist.train import dist
from h2s_dist.specs.common import OptimSpec
from h2s_dist.specs.training import PretrainSpec
from h2s_dist.train.builders import build_motionnet_from, motionnet_param_groups, unsup_loss_config
from h2s_dist.data.shards import TrainStream
from h2s_dist.train.task import StreamTask, flow_picture, run_training, stream_config


class PretrainTask(StreamTask):
    labeled = False  # MotionNet learns from any video

    def __init__(self, spec: PretrainSpec):
        self.spec = spec
        self.loss_config = unsup_loss_config(spec.loss, finetuning=False)
        self.validate_every_steps = spec.validation.every_steps if spec.validation else None
        self._validation_sets: dict[str, list] | None = None

    def validation_sets(self) -> dict[str, list]:
        """{set name: FlowPairs} of the spec's validation, read once (synthetic pairs inside a
        real clip of the network's length; dev-set pairs resized to max_side)."""
        if self._validation_sets is None:
            from h2s_dist.data import flow_sets

            config, sets = self.spec.validation, {}
            if config.synthetic_pairs:
                width, height = config.synthetic_size
                sets["synthetic"] = flow_sets.synthetic_pairs(
                    config.synthetic_pairs, height, width, window_frames=max(self.spec.data.clip_len_frames, 2))
            if config.flow_dev:
                for name, pairs in flow_sets.read_flow_dev(config.flow_dev).items():
                    sets[name] = [flow_sets.resize_pair(pair, config.max_side) for pair in pairs]
            self._validation_sets = sets
        return self._validation_sets

    def validate(self, model, device) -> dict[str, float]:
        """`val/epe` (mean over sets) and `val/epe/<set>`: the flow error on ground truth."""
        if self.spec.validation is None:
            return {}
        from h2s_dist.train.flow_eval import flow_epe

        return flow_epe(model, self.validation_sets())

    def build_model(self) -> torch.nn.Module:
        return build_motionnet_from(self.spec.motionnet, self.spec.data.clip_len_frames, self.spec.init_weights)

    def param_groups(self, model, optim: OptimSpec) -> list[dict[str, Any]]:
        return motionnet_param_groups(model, optim.lr, optim.bias_lr_multiplier)

    @property
    def stream_cls(self):
        """Frames, or with proxy guidance frames packed with their cached flow (ProxyTrainStream,
        whose `to_network_input` the Task's `network_input` then applies)."""
        if not self.spec.proxy_flows:
            return TrainStream
        from h2s_dist.data.proxy_stream import ProxyTrainStream

        return ProxyTrainStream

    def stream_setup(self, seed: int):
        """Frames, or with proxy guidance frames packed with each clip's cached flow (a
        ProxyStreamConfig naming the flow dataset; unpacked in `clips`)."""
        config, stream_cls = super().stream_setup(seed)
        if not self.spec.proxy_flows:
            return config, stream_cls
        from h2s_dist.data.proxy_stream import ProxyStreamConfig

        return ProxyStreamConfig(**dataclasses.asdict(config), flows_uri=self.spec.proxy_flows), stream_cls

    def clips(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch's network input -> (clips (B, T, 3, H, W), proxy flow (B, 2(T-1), H, W) px or None)."""
        if not self.spec.proxy_flows:
            return packed, None
        from h2s_dist.data.proxy_stream import unpack_proxy_batch

        return unpack_proxy_batch(packed, self.spec.data.clip_len_frames)

    def loss(self, model, batch, device):
        clips, proxy = self.clips(self.network_input(batch[0], device))
        flows = model(clips)
        backward = None
        if self.loss_config.occlusion == "forward_backward":
            with torch.no_grad():  # the flows of the time-reversed clip only shape the occlusion mask
                backward = dist.unwrap(model)(clips.flip(1))
        total, terms = unsupervised_flow_loss(frame_conv.denormalize(clips), flows, self.loss_config, backward)
        if proxy is not None:
            proxy_total, proxy_terms = proxy_flow_loss(flows, proxy)
            total = total + self.spec.loss.proxy_weight * proxy_total
            terms.update(proxy_terms, proxy=self.spec.loss.proxy_weight * proxy_total.detach())
        logged = {f"loss/{name}": value for name, value in terms.items()}  # detached, on the device
        logged["loss/total"] = total.detach()
        return total, logged

    def pictures(self, model, batch, device) -> dict[str, np.ndarray]:
        clips = self.clips(self.network_input(batch[0][:1], device))[0]
        flows = model(clips)
        return {"flows": flow_picture(clips[0], flows[-1][0])}

    def final_weights(self, model) -> dict[str, dict[str, torch.Tensor]]:
        return {"motionnet": model.state_dict()}


def run(spec: PretrainSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    return run_training(spec, PretrainTask(spec), session, tracker, output_uri)
