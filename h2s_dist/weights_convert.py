"""ImageNet VGG16 weights (torchvision or Caffe) -> a h2s_dist VGG16 state dict.

    h2s weights convert vgg16-397923af.pth vgg16_imagenet.pt --from torchvision
    h2s weights convert VGG_ILSVRC_16_layers.caffemodel s3://h2s-models/vgg16_imagenet.pt --from caffe
    state = convert_caffe(read_caffemodel(open(path, "rb").read()), flavour="paper")

The convention of every weights file h2s_dist reads (`init_weights`, `vgg_rgb_weights`,
`vgg_weights`, the weights stages hand each other): a torch state dict (float32 tensors)
of the h2s_dist network, with its parameter names (`features.conv1_1.weight` ...
`classifier.fc8.bias`), whose first layer expects exactly what h2s_dist feeds it: RGB
frames in channel order R, G, B as (pixel - mean) / 255, pixel in 0..255, mean (R, G, B) =
(123, 117, 104) (`h2s_dist.frames.normalize`); flow stacks as `FlowNormalize` makes them.
Nothing is converted at load time: a file in another convention goes through this module
once.

How a source's input convention is folded into conv1_1. A source is fed, per channel in
its own order, s_c = (pixel_c / 255 - mean_c) / std_c; our input is x_c = pixel_c / 255 - mean'_c
(std' = 1). So s_c = x_c / std_c + (mean'_c - mean_c) / std_c: conv1_1's input channels are
put in RGB order, its weights multiplied by 1 / std_c, and each filter's sum of
W * (mean'_c - mean_c) / std_c is added to its bias.
  - Caffe (BGR, 0..255 minus BGR mean (104, 117, 123), std 1/255): channels reversed,
    weights x255, bias unchanged. Exact: our mean is Caffe's, so the zero padding stands
    for the same pixel value in both conventions.
  - torchvision (RGB, [0, 1] minus (0.485, 0.456, 0.406), divided by (0.229, 0.224, 0.225)):
    weights x 1 / std, bias + the mean offset. Border pixels differ slightly: zero padding
    cannot absorb a mean offset. Padding is 0 in each convention's units, which is the
    pixel 255 x (0.485, 0.456, 0.406) = (123.7, 116.3, 103.5) for torchvision and our mean
    (123, 117, 104) for us, at most 0.72 pixel levels apart; so conv1_1's outermost output
    ring differs a little (on random VGG16s at 224x224 the logits moved by 1.3e-4 of the
    largest one); everything else is exact.

Other layers: conv and fc weights keep torch's (out, in, kh, kw) / (out, in) layout, which
Caffe and torchvision share. fc6 reads the flattened pool5 grid in (C, H, W) order in all
three; a source grid S x S (7 for VGG16) becomes our `pooled_size` P x P: copied when S == P
(the paper flavour), otherwise each (S/P)^2 block of columns is summed, which is exact when
pool5 is P x P (the source's adaptive pool then only replicates cells; tiny flavour, inputs
32..63). fc8 is converted as it is (1000 ImageNet classes): `load_weights(strict=False)`
and `temporal_from_rgb(target_state_dict=...)` leave it out of a network with another class
count, which keeps its random init; `keep_fc8=False` (`--drop-fc8`) leaves it out of the file.

The Caffe reader is a small protobuf wire-format parser (no Caffe, no protobuf package):
NetParameter.layer (100) = LayerParameter {name 1, type 2, blobs 7}, or the legacy
NetParameter.layers (2) = V1LayerParameter {name 4, blobs 6}; BlobProto {shape 7 =
BlobShape {dim 1}, data 5 (packed float), double_data 8, legacy num/channels/height/width
1..4}. Imports torch only.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from h2s_dist.frames import MEAN_RGB_255
from h2s_dist.models.vgg import build_vgg16

SOURCES = ("torchvision", "caffe")


@dataclass(frozen=True)
class InputConvention:
    """What a network's first layer is fed: per channel (pixel / 255 - mean) / std, pixel in
    0..255, channels in `order`; `mean` and `std` in [0, 1] pixel units, listed in `order`."""

    order: str
    """"RGB" or "BGR"."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def in_order(self, order: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(mean, std, index) listed in `order`; index[i] is where channel order[i] sits in self.order."""
        index = [self.order.index(channel) for channel in order]
        mean = torch.tensor(self.mean, dtype=torch.float64)[index]
        return mean, torch.tensor(self.std, dtype=torch.float64)[index], index


OURS = InputConvention("RGB", tuple(m / 255.0 for m in MEAN_RGB_255), (1.0, 1.0, 1.0))
TORCHVISION = InputConvention("RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE = InputConvention("BGR", (104 / 255.0, 117 / 255.0, 123 / 255.0), (1 / 255.0,) * 3)


def fold_input_convention(weight: torch.Tensor, bias: torch.Tensor, source: InputConvention,
                          target: InputConvention = OURS) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1_1 (O, 3, k, k), (O,) fed `source`'s input -> the same filter fed `target`'s.

    Equal outputs wherever the kernel does not reach the zero padding (and there too when
    both conventions have the same mean). Computed in float64, returned in weight's dtype."""
    mean_s, std_s, index = source.in_order(target.order)
    mean_t, std_t, _ = target.in_order(target.order)
    w = weight.double()[:, index]
    scale = (std_t / std_s).view(1, 3, 1, 1)
    offset = ((mean_t - mean_s) / std_s).view(1, 3, 1, 1)
    new_bias = bias.double() + (w * offset).sum(dim=(1, 2, 3))
    return (w * scale).to(weight.dtype), new_bias.to(bias.dtype)


def fold_fc6(weight: torch.Tensor, channels: int, pooled_size: int) -> torch.Tensor:
    """fc6 (O, C*S*S) reading an S x S pool5 grid -> (O, C*P*P) reading P x P, P = pooled_size.

    Copied when S == P; when P divides S, each (S/P) x (S/P) block of a channel's columns is
    summed. Returned unchanged when the sizes do not fit (the shape check names it)."""
    out_features, in_features = weight.shape
    grid = math.isqrt(in_features // channels) if in_features % channels == 0 else 0
    if grid == pooled_size or grid == 0 or grid * grid * channels != in_features or grid % pooled_size:
        return weight
    k = grid // pooled_size
    blocks = weight.reshape(out_features, channels, pooled_size, k, pooled_size, k)
    return blocks.sum(dim=(3, 5)).reshape(out_features, -1)


# ----------------------------------------------------------------------------- layer mapping


def vgg16_layers(model: nn.Module) -> dict[str, str]:
    """{layer name: our state-dict prefix} of a h2s_dist VGG16, conv1_1 ... fc8 in order."""
    return {name: f"{part}.{name}"
            for part in ("features", "classifier")
            for name, module in getattr(model, part).named_children()
            if isinstance(module, (nn.Conv2d, nn.Linear))}


def torchvision_names(model: nn.Module) -> dict[str, str]:
    """{layer name: torchvision prefix}: torchvision's Sequentials hold the same modules in
    the same order as ours (conv, relu, ..., pool; fc6, relu, dropout, ...), so a layer's
    index is its position: conv1_1 -> features.0, conv5_3 -> features.28, fc8 -> classifier.6."""
    return {name: f"{part}.{index}"
            for part in ("features", "classifier")
            for index, (name, module) in enumerate(getattr(model, part).named_children())
            if isinstance(module, (nn.Conv2d, nn.Linear))}


def _shape_model(flavour: str, num_classes: int) -> nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init
        return build_vgg16(flavour, in_channels=3, num_classes=num_classes)


def convert_layers(layers: Mapping[str, tuple[torch.Tensor, torch.Tensor]], source: InputConvention,
                   flavour: str = "paper", keep_fc8: bool = True,
                   source_names: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """{conv1_1: (weight, bias), ..., fc8: (...)} in torch layout, fed `source`'s input ->
    a state dict of a h2s_dist VGG16 of `flavour` (fc8's class count from the source; fc8
    neither needed nor written when not `keep_fc8`).

    Raises ValueError naming every missing layer, and every layer whose shape differs from
    the flavour's (`source_names` gives each layer's name in the source, for the message)."""
    names = {name: f"{name} ({source})" for name, source in (source_names or {}).items() if source != name}
    fc8 = layers.get("fc8")
    model = _shape_model(flavour, int(fc8[0].shape[0]) if fc8 is not None and fc8[0].dim() else 1000)
    prefixes = {name: prefix for name, prefix in vgg16_layers(model).items() if keep_fc8 or name != "fc8"}
    missing = [names.get(name, name) for name in prefixes if name not in layers]
    if missing:
        raise ValueError(f"missing VGG16 layers: {', '.join(missing)}; is the source a plain VGG16?")
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, prefix in prefixes.items():
        weight, bias = layers[name]
        if name == "fc6" and weight.dim() == 2:
            weight = fold_fc6(weight, model.config.conv_channels[-1], model.config.pooled_size)
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = weight, bias
    wrong = [f"{names.get(name, name)} {kind}: source {tuple(out[key].shape)} vs "
             f"{flavour} VGG16 {tuple(expected[key].shape)}"
             for name, prefix in prefixes.items()
             for kind, key in (("weight", f"{prefix}.weight"), ("bias", f"{prefix}.bias"))
             if out[key].shape != expected[key].shape]
    if wrong:
        raise ValueError(f"the source does not fit a {flavour} h2s_dist VGG16 (3 -> classes):\n  "
                         + "\n  ".join(wrong) + "\n  A real ImageNet VGG16 converts to --flavour paper; "
                         "tiny is for tiny sources.")
    out["features.conv1_1.weight"], out["features.conv1_1.bias"] = fold_input_convention(
        out["features.conv1_1.weight"], out["features.conv1_1.bias"], source)
    return {key: value.detach().to(torch.float32).contiguous().clone() for key, value in out.items()}


# ----------------------------------------------------------------------------- torchvision


def read_torchvision(data: bytes) -> dict[str, torch.Tensor]:
    """The state dict in a torch file (torch.load with weights_only: tensors only)."""
    if data[:4] != b"PK\x03\x04" and data[:1] != b"\x80":
        raise ValueError("not a torch state-dict file (neither torch's zip format nor a pickle); "
                         "for a Caffe .caffemodel use --from caffe")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"torch.load(weights_only=True) cannot read it ({type(err).__name__}); convert a "
                         "file written by torch.save(model.state_dict()), not a pickled model") from None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"the torch file holds a {type(state).__name__}, not a state dict of tensors; "
                         "save model.state_dict()")
    return dict(state)


def convert_torchvision(state_dict: Mapping[str, torch.Tensor], flavour: str = "paper", keep_fc8: bool = True,
                        convention: InputConvention = TORCHVISION) -> dict[str, torch.Tensor]:
    """A torchvision VGG16 state dict (features.0.weight ... classifier.6.bias), fed RGB
    [0, 1] normalised by ImageNet mean and std -> a h2s_dist VGG16 state dict (see the module)."""
    if "features.conv1_1.weight" in state_dict:
        raise ValueError("this is a h2s_dist VGG16 state dict already: use it as it is")
    names = torchvision_names(_shape_model(flavour, 1000))
    layers = {name: (state_dict[f"{prefix}.weight"], state_dict[f"{prefix}.bias"])
              for name, prefix in names.items()
              if f"{prefix}.weight" in state_dict and f"{prefix}.bias" in state_dict}
    used = {f"{prefix}.{kind}" for prefix in names.values() for kind in ("weight", "bias")}
    unused = sorted(set(state_dict) - used)
    if unused and len(layers) == len(names):
        raise ValueError(f"tensors a plain VGG16 does not have: {', '.join(unused[:8])}"
                         f"{' ...' if len(unused) > 8 else ''} (VGG16 with batch norm, or VGG19?)")
    return convert_layers(layers, convention, flavour, keep_fc8, names)


# ----------------------------------------------------------------------------- Caffe


class WireFormatError(ValueError):
    """Bytes that are not the protobuf message they should be."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireFormatError(f"bad varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def protobuf_fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of a protobuf message: an int for varints (type 0),
    a memoryview of the bytes for fixed64 (1), length-delimited (2) and fixed32 (5)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireFormatError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise WireFormatError(f"field {number} runs past the end ({size} bytes at byte {pos})")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise WireFormatError(f"wire type {wire} of field {number} (groups are not used by Caffe)")
        yield number, wire, value


def _packed_varints(buf: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def read_blob(buf: memoryview) -> torch.Tensor:
    """A BlobProto -> a float32 tensor of its shape (BlobShape dims, else legacy n, c, h, w)."""
    dims: list[int] = []
    legacy: dict[int, int] = {}
    floats, doubles = bytearray(), bytearray()  # one copy of the file's bytes, shared by the tensor
    for number, wire, value in protobuf_fields(buf):
        if number == 7 and wire == 2:  # BlobShape
            for dim_number, dim_wire, dim in protobuf_fields(value):
                if dim_number == 1:
                    dims += _packed_varints(dim) if dim_wire == 2 else [dim]
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
        elif number == 5 and wire in (2, 5):  # packed floats, or one unpacked float
            floats += value
        elif number == 8 and wire in (1, 2):
            doubles += value
    if floats and doubles or len(floats) % 4 or len(doubles) % 8:
        raise WireFormatError(f"blob data of {len(floats)} float and {len(doubles)} double bytes")
    data = (torch.frombuffer(floats, dtype=torch.float32) if floats else
            torch.frombuffer(doubles, dtype=torch.float64).float() if doubles else torch.zeros(0))
    if dims:
        shape = dims
    elif legacy:
        shape = [legacy.get(field, 1) for field in (1, 2, 3, 4)]  # num, channels, height, width
    else:
        shape = [data.numel()]
    if math.prod(shape) != data.numel():
        raise WireFormatError(f"blob shape {tuple(shape)} does not hold its {data.numel()} values")
    return data.reshape(shape)


def _read_layer(buf: memoryview, name_field: int, blobs_field: int) -> tuple[str, list[memoryview]]:
    name, blobs = "", []
    for number, wire, value in protobuf_fields(buf):
        if number == name_field and wire == 2:
            name = bytes(value).decode("utf-8", errors="replace")
        elif number == blobs_field and wire == 2:
            blobs.append(value)
        elif blobs_field == 6 and number == 1 and wire == 2:
            raise ValueError("a V0 (pre-2014) Caffe net: upgrade it with Caffe's upgrade_net_proto_binary")
    return name, blobs


def read_caffemodel(data: bytes) -> dict[str, list[torch.Tensor]]:
    """{layer name: its blobs} of a binary Caffe NetParameter, for the layers that have blobs."""
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        raise ValueError("this is a torch file, not a Caffe .caffemodel: use --from torchvision")
    layers: dict[str, list[torch.Tensor]] = {}
    try:
        for number, wire, value in protobuf_fields(memoryview(data)):
            if wire != 2 or number not in (2, 100):  # NetParameter.layers (V1), .layer
                continue
            name, blobs = _read_layer(value, 4, 6) if number == 2 else _read_layer(value, 1, 7)
            if not blobs:
                continue
            if name in layers:
                raise ValueError(f"layer {name!r} appears twice")
            try:
                layers[name] = [read_blob(blob) for blob in blobs]
            except WireFormatError as err:
                raise WireFormatError(f"layer {name!r}: {err}") from None
    except WireFormatError as err:
        raise ValueError(f"not a Caffe .caffemodel (binary NetParameter): {err}") from None
    if not layers:
        raise ValueError("no layer with weights: not a Caffe .caffemodel (a .prototxt is not one)")
    return layers


def convert_caffe(layers: Mapping[str, list[torch.Tensor]], flavour: str = "paper", keep_fc8: bool = True,
                  convention: InputConvention = CAFFE) -> dict[str, torch.Tensor]:
    """Caffe VGG16 blobs by layer (conv1_1 ... fc8, from `read_caffemodel`), fed BGR 0..255
    minus mean (104, 117, 123) -> a h2s_dist VGG16 state dict (see the module docstring)."""
    prefixes = vgg16_layers(_shape_model(flavour, 1000))
    unused = sorted(set(layers) - set(prefixes))
    if unused and set(prefixes) <= set(layers):
        raise ValueError(f"layers with weights a plain VGG16 does not have: {', '.join(unused[:8])} (VGG19?)")
    pairs = {}
    for name in prefixes:
        if name not in layers:
            continue
        if len(layers[name]) != 2:
            raise ValueError(f"caffe layer {name!r} has {len(layers[name])} blobs, expected 2 (weight, bias)")
        weight, bias = layers[name]
        if name.startswith("fc") and weight.dim() == 4 and weight.shape[:2] == (1, 1):
            weight = weight.reshape(weight.shape[2:])  # legacy blobs: (1, 1, out, in)
        pairs[name] = (weight, bias.reshape(-1))
    return convert_layers(pairs, convention, flavour, keep_fc8)


# ----------------------------------------------------------------------------- files


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, source: str, flavour: str = "paper",
                 keep_fc8: bool = True) -> dict[str, torch.Tensor]:
    """Read `src` (path or URI) as a `source` ("torchvision" or "caffe") VGG16, write the
    h2s_dist VGG16 state dict to `dst` (path or URI) and return it."""
    from h2s_dist.data import storage
    from h2s_dist.weights import save_state_dict

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
    data = storage.read_bytes(src)
    try:
        state = (convert_torchvision(read_torchvision(data), flavour, keep_fc8) if source == "torchvision"
                 else convert_caffe(read_caffemodel(data), flavour, keep_fc8))
    except ValueError as err:
        raise ValueError(f"{os.fspath(src)}: {err}") from None
    save_state_dict(state, dst)
    return state
