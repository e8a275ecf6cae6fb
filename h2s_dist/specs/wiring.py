"""Weights handed from stage to stage must fit the network that reads them: checked at
validation, from the specs alone.

A stage that trains a network describes it in its spec (MotionNet flavour and switches,
frames per clip, VGG16 flavour); a stage that reads those weights through a reference
(`motionnet_weights: ${pretrain.motionnet}`) describes the network it builds. When the two
descriptions differ, loading would fail on the workers (a 33-channel conv1 into a
21-channel one) or, worse, load into a different network. Pure Python: no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

Signature = dict[str, Any]


def _motionnet(spec) -> dict[str, Any]:
    m = spec.motionnet
    return {"motionnet.flavour": m.flavour, "motionnet.small_displacement": m.small_displacement,
            "motionnet.conv_between_deconv": m.conv_between_deconv}


def _clip(length: int) -> dict[str, Any]:
    return {"clip_len_frames": length}


def _temporal_vgg(flavour: str, clip_len_frames: int) -> dict[str, Any]:
    """A VGG16 on the flow stack of a clip: 2 (clip_len_frames - 1) input channels."""
    return {"vgg_flavour": flavour, "vgg_in_channels": 2 * (clip_len_frames - 1)}


def _stacked(spec, clip_len_frames: int) -> dict[str, Any]:
    return {**_motionnet(spec), **_clip(clip_len_frames), **_temporal_vgg(spec.vgg_flavour, clip_len_frames)}


# Stage kind -> {weights output: what the network it wrote looks like}.
PRODUCED: dict[str, dict[str, Callable[[Any], Signature]]] = {
    "pretrain_motionnet": {"motionnet": lambda s: {**_motionnet(s), **_clip(s.data.clip_len_frames)}},
    "finetune_stacked": {"stacked_temporal": lambda s: _stacked(s, s.data.clip_len_frames)},
    "train_spatial": {"spatial": lambda s: {"vgg_flavour": s.vgg_flavour, "vgg_in_channels": 3}},
    "train_temporal_flows": {"tvl1_temporal": lambda s: {**_temporal_vgg(s.vgg_flavour, s.data.clip_len_frames),
                                                         **_clip(s.data.clip_len_frames)}},
}

# Stage kind -> {field holding a weights URI: what the network reading it looks like}.
CONSUMED: dict[str, dict[str, Callable[[Any], Signature]]] = {
    "pretrain_motionnet": {"init_weights": lambda s: {**_motionnet(s), **_clip(s.data.clip_len_frames)}},
    "finetune_stacked": {
        "motionnet_weights": lambda s: {**_motionnet(s), **_clip(s.data.clip_len_frames)},
        # The paper's start: a temporal VGG16 trained on TV-L1 stacks of the same length.
        "vgg_weights": lambda s: {**_temporal_vgg(s.vgg_flavour, s.data.clip_len_frames),
                                  **_clip(s.data.clip_len_frames)},
        "init_weights": lambda s: _stacked(s, s.data.clip_len_frames),
    },
    "train_spatial": {"init_weights": lambda s: {"vgg_flavour": s.vgg_flavour, "vgg_in_channels": 3}},
    "train_temporal_flows": {"vgg_weights": lambda s: {**_temporal_vgg(s.vgg_flavour, s.data.clip_len_frames),
                                                       **_clip(s.data.clip_len_frames)}},
    "tvl1_flows": {"motionnet_weights": lambda s: {**_motionnet(s), **_clip(s.motionnet_frames)}},
    "evaluate": {
        "stacked_weights": lambda s: _stacked(s, s.clip_len_frames),
        "spatial_weights": lambda s: {"vgg_flavour": s.vgg_flavour, "vgg_in_channels": 3},
        "tvl1_weights": lambda s: {**_temporal_vgg(s.vgg_flavour, s.clip_len_frames), **_clip(s.clip_len_frames)},
    },
}


def produced_signature(spec: BaseModel, output: str) -> Signature | None:
    """What the network behind `output` of a stage with this spec looks like (None: not known).
    A tune stage's weights are its trial stage's."""
    if spec.kind == "tune":
        return produced_signature(spec.trial, output)
    describe = PRODUCED.get(spec.kind, {}).get(output)
    return describe(spec) if describe else None


def weights_problems(
    entries: Sequence[BaseModel], whole_reference: Callable[[str], tuple[str, str] | None]
) -> list[tuple[str, str]]:
    """(field path, message) for each weights reference whose producer trained another network.
    `whole_reference` parses a field's value into (stage, output) when it is one reference
    (h2s_dist.config.whole_reference: the job loader owns the reference syntax)."""
    index = {e.name: i for i, e in enumerate(entries)}
    problems = []
    for i, entry in enumerate(entries):
        for field, describe in CONSUMED.get(entry.kind, {}).items():
            reference = whole_reference(getattr(entry, field) or "")
            if reference is None or reference[0] not in index:
                continue
            producer_name, output = reference
            produced = produced_signature(entries[index[producer_name]], output)
            if produced is None:
                continue
            wanted = describe(entry)
            for key in sorted(set(wanted) & set(produced)):
                if wanted[key] != produced[key]:
                    problems.append((
                        f"stages[{i}].{field}",
                        f"{producer_name}.{output} holds a network with {key} {produced[key]!r} "
                        f"(stages[{index[producer_name]}]), but this stage builds one with {key} {wanted[key]!r}; "
                        "make them agree",
                    ))
    return problems
