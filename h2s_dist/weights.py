"""Model weights in and out of storage (plain paths, file://, s3://), with loud shape checks.

    save_state_dict(model.state_dict(), "s3://bucket/run/weights/motionnet.pt")
    load_weights(model, "s3://bucket/run/weights/motionnet.pt")          # every name and shape must match
    skipped = load_weights(model, uri, strict=False)                     # load what fits, list the rest
    load_weights(vgg51, ucf101_uri, new_head=VGG_CLASSIFIER)             # all but a resized fc8, strictly
    load_weights(model, "models:/stacked_temporal/3")                    # a registered model version

Every weights file read here is in our convention: a state dict of our network (our
parameter names) whose first layer expects our input, RGB frames as (pixel - mean) / 255
with mean (R, G, B) = (123, 117, 104) (`h2s_dist.frames.normalize`), or flow stacks from
`FlowNormalize`. Nothing is converted on load; ImageNet VGG16 weights in torchvision or
Caffe form are converted once by `h2s weights convert` (`h2s_dist.weights_convert`).

A `models:/NAME/VERSION` (or `/latest`, or `models:/NAME@ALIAS`) URI is a model version in the MLflow
registry (training stages register their weights under their output name, e.g.
`stacked_temporal`): it is downloaded through mlflow's artifact download from the tracking
server in $H2S_TRACKING_URI (set by the launcher for a stage's processes), else
$MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import io
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any, Mapping

import torch

from h2s_dist.data import storage


def save_state_dict(state_dict: Mapping[str, Any], uri: str | os.PathLike) -> None:
    """torch.save `state_dict` to `uri` atomically: readers see the old file or the whole new one."""
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    storage.write_bytes(uri, buffer.getvalue())


REGISTRY_SCHEME = "models:/"
TRACKING_URI_ENV = "H2S_TRACKING_URI"


def registered_model_bytes(uri: str, tracking_uri: str | None = None) -> bytes:
    """The weights file of the registered model version `uri` (`models:/NAME/VERSION`,
    `models:/NAME/latest` or `models:/NAME@ALIAS`), through mlflow's artifact download. The
    version's source is one file (`weights/<name>.pt`, as `MlflowTracker.log_state_dict`
    registers it) or a folder holding exactly one `.pt`."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    tracking_uri = tracking_uri or os.environ.get(TRACKING_URI_ENV) or os.environ.get("MLFLOW_TRACKING_URI")
    # An explicit client: mlflow's own `models:/` resolution reads the process-wide registry URI.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, version = _model_version(client, uri)
    source = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="h2s-registry-") as folder:
        local = pathlib.Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=folder,
                                                                 tracking_uri=tracking_uri))
        files = [local] if local.is_file() else sorted(local.rglob("*.pt"))
        if len(files) != 1:
            raise ValueError(f"{uri}: expected one .pt weights file in the model version, found "
                             f"{[f.name for f in files] or 'none'}")
        return files[0].read_bytes()


def _model_version(client, uri: str) -> tuple[str, str]:
    """(name, version) of `models:/NAME/VERSION`, `models:/NAME/latest` or `models:/NAME@ALIAS`."""
    rest = uri[len(REGISTRY_SCHEME):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = rest.rpartition("/")
    if version == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise ValueError(f"{uri}: no version of registered model {name!r}")
        return name, str(max(int(v.version) for v in versions))
    if not name or not version.isdigit():
        raise ValueError(f"{uri}: expected models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS")
    return name, version


def load_state_dict(uri: str | os.PathLike, map_location: str | torch.device = "cpu",
                    weights_only: bool = True) -> dict[str, Any]:
    """The state dict saved at `uri` (a storage URI or `models:/NAME/VERSION`), tensors on
    `map_location`. `weights_only` (torch's safe unpickler) refuses arbitrary objects; turn it
    off only for files you trust."""
    text = os.fspath(uri)
    data = registered_model_bytes(text) if text.startswith(REGISTRY_SCHEME) else storage.read_bytes(uri)
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
                     source: str = "state dict", new_head: Sequence[str] = ()) -> list[str]:
    """Load `state_dict` into `module`; see `load_weights`. `source` names it in errors."""
    kept = without_resized_head(module, state_dict, new_head)
    fresh_head = sorted(set(state_dict) - set(kept))
    state_dict = kept
    problems = state_dict_mismatches(module, state_dict)
    problems["missing"] = [name for name in problems["missing"] if name not in fresh_head]
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
    return sorted(bad_shape | set(problems["missing"]) | set(problems["unexpected"]) | set(fresh_head))


def without_resized_head(module: torch.nn.Module, state_dict: Mapping[str, Any],
                         new_head: Sequence[str]) -> dict[str, Any]:
    """`state_dict` less the `new_head` tensors whose shape differs from the module's: a
    classifier trained on another class count (UCF101's 101 -> HMDB51's 51, ImageNet's 1000)
    keeps the module's fresh init. Both tensors of the head go together: a head whose weight
    has the module's shape is loaded whole, one that does not is dropped whole."""
    expected = module.state_dict()
    resized = [name for name in new_head if name in state_dict and name in expected
               and tuple(state_dict[name].shape) != tuple(expected[name].shape)]
    if not resized:
        return dict(state_dict)
    return {name: value for name, value in state_dict.items() if name not in new_head}


def load_weights(module: torch.nn.Module, uri: str | os.PathLike, strict: bool = True,
                 new_head: Sequence[str] = ()) -> list[str]:
    """Load the weights at `uri` into `module` (in place).

    strict=True: raises ValueError naming every tensor whose shape differs (file and model
    shapes), every missing and every unexpected key; loads nothing in that case.
    strict=False: loads the tensors whose name and shape match and returns the sorted names
    that were skipped (shape mismatch, unexpected in the file, or missing from it).
    new_head: names of a classifier's tensors (e.g. `models.vgg.VGG16_CLASSIFIER`) that stay
    at the module's init when the file's differ in shape (another class count); they are then
    listed in the returned names, and every other tensor is loaded under `strict`."""
    state_dict = load_state_dict(uri)
    return apply_state_dict(module, state_dict, strict=strict, source=os.fspath(uri), new_head=new_head)
