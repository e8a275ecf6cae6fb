"""Model weights in and out of storage (plain paths, file://, s3://), with loud shape checks.

    save_state_dict(model.state_dict(), "s3://bucket/run/weights/motionnet.pt")
    load_weights(model, "s3://bucket/run/weights/motionnet.pt")          # every name and shape must match
    skipped = load_weights(model, uri, strict=False)                     # load what fits, list the rest

Every weights file read here is in our convention: a state dict of our network (our
parameter names) whose first layer expects our input, RGB frames as (pixel - mean) / 255
with mean (R, G, B) = (123, 117, 104) (`h2s_dist.frames.normalize`), or flow stacks from
`FlowNormalize`. Nothing is converted on load; ImageNet VGG16 weights in torchvision or
Caffe form are converted once by `h2s weights convert` (`h2s_dist.weights_convert`).
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping

import torch

from h2s_dist.data import storage


def save_state_dict(state_dict: Mapping[str, Any], uri: str | os.PathLike) -> None:
    """torch.save `state_dict` to `uri` atomically: readers see the old file or the whole new one."""
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load_state_dict(uri: str | os.PathLike, map_location: str | torch.device = "cpu",
                    weights_only: bool = True) -> dict[str, Any]:
    """The state dict saved at `uri`, tensors on `map_location`. `weights_only` (torch's safe
    unpickler) refuses arbitrary objects; turn it off only for files you trust."""
    data = storage.read_bytes(uri)
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)


def state_dict_mismatches(module: torch.nn.Module, state_dict: Mapping[str, Any]) -> dict[str, list[str]]:
    """What stops `state_dict` from loading into `module`: {"shape": ["name: file (..) vs model (..)"],
    "missing": [names the module has and the file lacks], "unexpected": [names only in the file]}."""
    expected = module.state_dict()
    shape = [
        f"{name}: file {tuple(value.shape)} vs model {tuple(expected[name].shape)}"
        for name, value in state_dict.items()
        if name in expected and torch.is_tensor(value) and value.shape != expected[name].shape
    ]
    return {
        "shape": sorted(shape),
        "missing": sorted(set(expected) - set(state_dict)),
        "unexpected": sorted(set(state_dict) - set(expected)),
    }


def apply_state_dict(module: torch.nn.Module, state_dict: Mapping[str, Any], strict: bool = True,
                     source: str = "state dict") -> list[str]:
    """Load `state_dict` into `module`; see `load_weights`. `source` names it in errors."""
    problems = state_dict_mismatches(module, state_dict)
    if strict and any(problems.values()):
        lines = [f"{source} does not fit {type(module).__name__}:"]
        if problems["shape"]:
            lines.append(f"  shape mismatch ({len(problems['shape'])}): " + "; ".join(problems["shape"]))
        for kind in ("missing", "unexpected"):
            if problems[kind]:
                lines.append(f"  {kind} keys ({len(problems[kind])}): " + ", ".join(problems[kind]))
        lines.append("  Check the model flavour/config matches the one that wrote the weights, "
                     "or pass strict=False to load only the matching tensors.")
        raise ValueError("\n".join(lines))
    bad_shape = {entry.split(":", 1)[0] for entry in problems["shape"]}
    fitting = {name: value for name, value in state_dict.items()
               if name not in bad_shape and name not in problems["unexpected"]}
    module.load_state_dict(fitting, strict=False)
    return sorted(bad_shape | set(problems["missing"]) | set(problems["unexpected"]))


def load_weights(module: torch.nn.Module, uri: str | os.PathLike, strict: bool = True) -> list[str]:
    """Load the weights at `uri` into `module` (in place).

    strict=True: raises ValueError naming every tensor whose shape differs (file and model
    shapes), every missing and every unexpected key; loads nothing in that case.
    strict=False: loads the tensors whose name and shape match and returns the sorted names
    that were skipped (shape mismatch, unexpected in the file, or missing from it)."""
    state_dict = load_state_dict(uri)
    return apply_state_dict(module, state_dict, strict=strict, source=os.fspath(uri))
