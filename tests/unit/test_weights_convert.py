"""weights_convert: a VGG16 in torchvision's or Caffe's form, converted, gives the source's logits.

The references are written here independently of the converter: torchvision's VGG16 layout
in plain torch, fed RGB [0, 1] normalised by ImageNet mean and std, and a Caffe VGG16 as a
.caffemodel written by a small protobuf writer, run by a plain-torch forward fed BGR
0..255 minus (104, 117, 123). Tiny widths (our `tiny` flavour) and 32x32 images keep it fast.
"""

from __future__ import annotations

import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from h2s_dist import cli
from h2s_dist.frames import normalize
from h2s_dist.models import build_vgg16
from h2s_dist.weights import load_weights, save_state_dict
from h2s_dist.weights_convert import (
    convert_caffe,
    convert_file,
    convert_torchvision,
    read_caffemodel,
    torchvision_names,
)

WIDTHS, FC, CLASSES, SIZE = (8, 16, 32, 64, 64), 64, 10, 32  # the tiny flavour; pool5 is 1x1 at 32x32
CONVS = [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1)]
# torchvision.models.vgg16().state_dict() prefixes, written out by hand.
TORCHVISION_PREFIXES = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)] + [
    f"classifier.{i}" for i in (0, 3, 6)]
TV_MEAN, TV_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = torch.tensor([104.0, 117.0, 123.0])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run ~10x faster on one thread than on two busy shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pixels(seed: int = 0, batch: int = 2) -> torch.Tensor:
    """Fixed random RGB images, uint8 (B, 3, 32, 32)."""
    return torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """MSRA weights (the signal survives 16 layers) and nonzero biases (the fold moves them)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.normal_(m.bias, 0.0, 0.1)
    return module.eval()


def _ours(state: dict, num_classes: int = CLASSES) -> nn.Module:
    model = build_vgg16("tiny", num_classes=num_classes).eval()
    model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------- torchvision reference


class TorchvisionVGG16(nn.Module):
    """torchvision.models.VGG (config "D"): same Sequential indices, avgpool to 7x7, fc6 on C*7*7."""

    def __init__(self, widths=WIDTHS, fc=FC, num_classes=CLASSES):
        super().__init__()
        layers, cin = [], 3
        for n, width in zip((2, 2, 3, 3, 3), widths):
            for _ in range(n):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
                cin = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(cin * 49, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, fc),
                                        nn.ReLU(True), nn.Dropout(), nn.Linear(fc, num_classes))

    def forward(self, x: torch.Tensor, pad_value: torch.Tensor | None = None) -> torch.Tensor:
        """`pad_value` (3,): conv1_1 pads with it instead of zeros."""
        if pad_value is not None:
            conv = self.features[0]
            padded = F.pad(x - pad_value.view(1, 3, 1, 1), (1, 1, 1, 1)) + pad_value.view(1, 3, 1, 1)
            x = self.features[1:](F.conv2d(padded, conv.weight, conv.bias))
        else:
            x = self.features(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def _torchvision_input(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255 - TV_MEAN.view(1, 3, 1, 1)) / TV_STD.view(1, 3, 1, 1)


def test_torchvision_indices_are_torchvisions():
    names = torchvision_names(build_vgg16("tiny"))
    assert list(names) == [*CONVS, "fc6", "fc7", "fc8"]
    assert list(names.values()) == TORCHVISION_PREFIXES
    reference_keys = set(TorchvisionVGG16().state_dict())
    assert reference_keys == {f"{p}.{k}" for p in TORCHVISION_PREFIXES for k in ("weight", "bias")}


def test_torchvision_vgg16_converts_exactly_where_the_padding_agrees():
    """Padding conv1_1's input with our mean (in torchvision's units) makes both networks see
    the same image: then every layer, the fc6 fold (7x7 -> 1x1) included, must agree."""
    source = _randomize(TorchvisionVGG16(), seed=1)
    ours = _ours(convert_torchvision(source.state_dict(), flavour="tiny"))
    pixels = _pixels()
    our_mean_tv = (torch.tensor([123.0, 117.0, 104.0]) / 255 - TV_MEAN) / TV_STD
    with torch.no_grad():
        expected = source(_torchvision_input(pixels), pad_value=our_mean_tv)
        got = ours(normalize(pixels))
        other = ours(normalize(_pixels(seed=5)))
    scale = expected.abs().max()
    print(f"torchvision, mean padding: max |logit diff| {(got - expected).abs().max():.3g} (logits up to {scale:.3g})")
    assert (other - expected).abs().max() > 0.1 * scale  # the logits depend on the image
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_torchvision_border_effect_is_small():
    """With zero padding the outermost ring of conv1_1 differs by W * (our mean - its mean) /
    std (at most 0.72 of a pixel level): conv1_1 agrees inside, and the logits within 1%."""
    source = _randomize(TorchvisionVGG16(), seed=2)
    ours = _ours(convert_torchvision(source.state_dict(), flavour="tiny"))
    pixels = _pixels()
    with torch.no_grad():
        conv_source = source.features[0](_torchvision_input(pixels))
        conv_ours = ours.features.conv1_1(normalize(pixels))
        torch.testing.assert_close(conv_ours[..., 1:-1, 1:-1], conv_source[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
        assert (conv_ours - conv_source).abs().max() > 1e-3  # the border does differ
        expected, got = source(_torchvision_input(pixels)), ours(normalize(pixels))
    difference, scale = (got - expected).abs().max(), expected.abs().max()
    print(f"torchvision, zero padding: max |logit diff| {difference:.3g} (logits up to {scale:.3g})")
    assert difference < 0.01 * scale


def test_torchvision_errors_name_the_layer():
    state = _randomize(TorchvisionVGG16(), seed=3).state_dict()
    with pytest.raises(ValueError, match=r"conv1_1 \(features\.0\) weight: source \(8, 3, 3, 3\) vs paper VGG16 "
                                         r"\(64, 3, 3, 3\)"):
        convert_torchvision(state, flavour="paper")
    del state["features.12.bias"]
    with pytest.raises(ValueError, match=r"missing VGG16 layers: conv3_2 \(features\.12\);"):
        convert_torchvision(state, flavour="tiny")
    with pytest.raises(ValueError, match="h2s_dist VGG16 state dict already"):
        convert_torchvision(build_vgg16("tiny").state_dict(), flavour="tiny")
    extra = {**_randomize(TorchvisionVGG16(), seed=3).state_dict(), "features.30.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="features.30.weight"):
        convert_torchvision(extra, flavour="tiny")


# ----------------------------------------------------------------------------- Caffe reference


def _caffe_layers(seed: int, num_classes: int = CLASSES) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random VGG16 blobs in Caffe layout (conv (O, I, 3, 3) on BGR input, fc (O, I))."""
    g = torch.Generator().manual_seed(seed)
    shapes, cin = {}, 3
    for name, width in zip(CONVS, [w for n, w in zip((2, 2, 3, 3, 3), WIDTHS) for _ in range(n)]):
        shapes[name], cin = (width, cin, 3, 3), width
    shapes.update(fc6=(FC, cin), fc7=(FC, FC), fc8=(num_classes, FC))
    layers = {}
    for name, shape in shapes.items():
        fan_in = shape[1] * (9 if len(shape) == 4 else 1)
        # Caffe-form conv1_1 sees 0..255 input: its weights are ~255 times smaller.
        std = (2 / fan_in) ** 0.5 / (64 if name == "conv1_1" else 1)
        layers[name] = (torch.randn(shape, generator=g) * std, torch.randn(shape[0], generator=g) * 0.1)
    return layers


def _caffe_forward(layers, pixels: torch.Tensor) -> torch.Tensor:
    """Caffe's VGG16 on uint8 RGB pixels: BGR, 0..255 minus (104, 117, 123)."""
    x = pixels.float()[:, [2, 1, 0]] - CAFFE_MEAN_BGR.view(1, 3, 1, 1)
    for name in CONVS:
        x = F.relu(F.conv2d(x, *layers[name], padding=1))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            x = F.max_pool2d(x, 2, 2)
    x = torch.flatten(x, 1)
    x = F.relu(F.linear(x, *layers["fc6"]))
    return F.linear(F.relu(F.linear(x, *layers["fc7"])), *layers["fc8"])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | int | str) -> bytes:
    """A varint field for an int, a length-delimited one for bytes and str."""
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _blob(t: torch.Tensor, style: str) -> bytes:
    data = _field(5, struct.pack(f"<{t.numel()}f", *t.flatten().tolist()))  # packed float
    if style == "v1":  # legacy num, channels, height, width
        dims = [1] * (4 - t.dim()) + list(t.shape)
        return b"".join(_field(i, d) for i, d in zip((1, 2, 3, 4), dims)) + data
    if style == "packed":
        shape = _field(1, b"".join(_varint(d) for d in t.shape))
    else:
        shape = b"".join(_field(1, d) for d in t.shape)
    return _field(7, shape) + data


def _caffemodel(layers, style: str = "packed", skip: str | None = None, extra: str | None = None) -> bytes:
    """NetParameter bytes: `layer` (100) entries, or V1 `layers` (2) when style is "v1"; with
    layers without blobs (data, relu, pool) and fields the reader must skip (bottom, top)."""
    def layer(name: str, kind: str, blobs: list[torch.Tensor]) -> bytes:
        body = [_field(1, name), _field(2, kind), _field(3, "bottom"), _field(4, "top")]
        if style == "v1":  # V1LayerParameter: bottom 2, top 3, name 4, type 5 (enum), blobs 6
            body = [_field(2, "bottom"), _field(3, "top"), _field(4, name), _field(5, 4)]
        body += [_field(6 if style == "v1" else 7, _blob(b, style)) for b in blobs]
        return _field(2 if style == "v1" else 100, b"".join(body))

    out = [_field(1, "VGG_ILSVRC_16_layers"), _field(3, "data"), _field(4, 1), _field(4, 3)]
    out.append(layer("data", "Input", []))
    for name, blobs in {**layers, **({extra: layers["conv5_3"]} if extra else {})}.items():
        if name != skip:
            out += [layer(name, "Convolution" if name.startswith("conv") else "InnerProduct", list(blobs)),
                    layer(name.replace("conv", "relu").replace("fc", "relu"), "ReLU", [])]
    return b"".join(out)


@pytest.mark.parametrize("style", ["packed", "unpacked", "v1"])
def test_caffe_vgg16_converts_exactly(style):
    layers = _caffe_layers(seed=4)
    ours = _ours(convert_caffe(read_caffemodel(_caffemodel(layers, style)), flavour="tiny"))
    pixels = _pixels()
    with torch.no_grad():
        expected, got = _caffe_forward(layers, pixels), ours(normalize(pixels))
        other = ours(normalize(_pixels(seed=5)))
    scale = expected.abs().max()
    print(f"caffe ({style}): max |logit diff| {(got - expected).abs().max():.3g} (logits up to {scale:.3g})")
    assert (other - expected).abs().max() > 0.1 * scale
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_caffemodel_reader_reads_blobs_with_their_shapes():
    layers = _caffe_layers(seed=6)
    for style in ("packed", "v1"):
        blobs = read_caffemodel(_caffemodel(layers, style))
        assert list(blobs) == [*CONVS, "fc6", "fc7", "fc8"]  # data and relu layers have no blobs
        weight, bias = blobs["conv2_1"]
        assert torch.equal(weight, layers["conv2_1"][0]) and torch.equal(bias.flatten(), layers["conv2_1"][1])
    assert blobs["fc6"][0].shape == (1, 1, FC, WIDTHS[-1])  # v1: legacy 4-d blob


def test_caffe_reader_agrees_with_the_protobuf_library():
    """Bytes written by google.protobuf from the same field numbers, to check the writer above."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="mini_caffe.proto", package="mini", syntax="proto2")
    F_ = descriptor_pb2.FieldDescriptorProto
    spec = {"BlobShape": [("dim", 1, F_.TYPE_INT64, None, True)],
            "BlobProto": [("shape", 7, F_.TYPE_MESSAGE, ".mini.BlobShape", False), ("data", 5, F_.TYPE_FLOAT, None, True)],
            "LayerParameter": [("name", 1, F_.TYPE_STRING, None, False), ("type", 2, F_.TYPE_STRING, None, False),
                               ("blobs", 7, F_.TYPE_MESSAGE, ".mini.BlobProto", False)],
            "NetParameter": [("name", 1, F_.TYPE_STRING, None, False),
                             ("layer", 100, F_.TYPE_MESSAGE, ".mini.LayerParameter", False)]}
    for message, fields in spec.items():
        m = fd.message_type.add(name=message)
        for name, number, kind, type_name, packed in fields:
            repeated = name in ("dim", "data", "blobs", "layer")
            f = m.field.add(name=name, number=number, type=kind,
                            label=F_.LABEL_REPEATED if repeated else F_.LABEL_OPTIONAL)
            if type_name:
                f.type_name = type_name
            if packed:
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    net = message_factory.GetMessageClass(pool.FindMessageTypeByName("mini.NetParameter"))(name="vgg")
    layers = _caffe_layers(seed=7)
    for name, blobs in layers.items():
        layer = net.layer.add(name=name, type="Convolution")
        for t in blobs:
            blob = layer.blobs.add()
            blob.shape.dim.extend(t.shape)
            blob.data.extend(t.flatten().tolist())
    read = read_caffemodel(net.SerializeToString())
    assert all(torch.equal(read[name][i], layers[name][i]) for name in layers for i in (0, 1))


def test_caffe_errors_name_the_layer():
    layers = _caffe_layers(seed=8)
    with pytest.raises(ValueError, match=r"missing VGG16 layers: conv3_2;"):
        convert_caffe(read_caffemodel(_caffemodel(layers, skip="conv3_2")), flavour="tiny")
    with pytest.raises(ValueError, match=r"fc6 weight: source \(64, 64\) vs paper VGG16 "
                                         r"\(4096, 25088\)"):
        convert_caffe(read_caffemodel(_caffemodel(layers)), flavour="paper")
    with pytest.raises(ValueError, match="conv5_4"):
        convert_caffe(read_caffemodel(_caffemodel(layers, extra="conv5_4")), flavour="tiny")
    with pytest.raises(ValueError, match="not a Caffe .caffemodel"):
        read_caffemodel(b"name: 'VGG_ILSVRC_16_layers'\nlayer { name: 'conv1_1' }\n")  # a .prototxt
    with pytest.raises(ValueError, match="not a Caffe .caffemodel.*runs past the end"):
        read_caffemodel(_caffemodel(layers)[:-10])  # truncated


def test_fc8_converts_as_it_is_or_stays_out():
    layers = _caffe_layers(seed=9, num_classes=1000)
    kept = convert_caffe(read_caffemodel(_caffemodel(layers)), flavour="tiny")
    assert kept["classifier.fc8.weight"].shape == (1000, FC)
    dropped = convert_caffe(read_caffemodel(_caffemodel(layers, skip="fc8")), flavour="tiny", keep_fc8=False)
    assert set(kept) - set(dropped) == {"classifier.fc8.weight", "classifier.fc8.bias"}
    model = build_vgg16("tiny", num_classes=101)
    model.load_state_dict(dropped, strict=False)  # a UCF101 network keeps its own fc8
    assert torch.equal(model.state_dict()["features.conv5_3.weight"], dropped["features.conv5_3.weight"])


# ----------------------------------------------------------------------------- files and the CLI


def test_cli_converts_a_caffemodel_into_weights_our_vgg_loads(tmp_path, capsys):
    layers = _caffe_layers(seed=10)
    src, dst = tmp_path / "vgg16.caffemodel", tmp_path / "out" / "vgg16_imagenet.pt"
    src.write_bytes(_caffemodel(layers))
    assert cli.main(["weights", "convert", str(src), str(dst), "--from", "caffe", "--flavour", "tiny"]) == 0
    assert "vgg_rgb_weights" in capsys.readouterr().err
    model = build_vgg16("tiny", num_classes=CLASSES).eval()
    assert load_weights(model, dst) == []
    with torch.no_grad():
        torch.testing.assert_close(model(normalize(_pixels())), _caffe_forward(layers, _pixels()), rtol=1e-5, atol=1e-4)


def test_cli_errors_say_what_is_wrong(tmp_path, capsys):
    torch_file, caffe_file = tmp_path / "tv.pth", tmp_path / "vgg.caffemodel"
    save_state_dict(_randomize(TorchvisionVGG16(), seed=11).state_dict(), torch_file)
    caffe_file.write_bytes(_caffemodel(_caffe_layers(seed=11)))
    cases = [
        (torch_file, "caffe", "tiny", "torch file, not a Caffe .caffemodel: use --from torchvision"),
        (caffe_file, "torchvision", "tiny", "not a torch state-dict file"),
        (torch_file, "torchvision", "paper", "conv1_1 (features.0) weight: source (8, 3, 3, 3)"),
    ]
    for src, source, flavour, message in cases:
        code = cli.main(["weights", "convert", str(src), str(tmp_path / "x.pt"), "--from", source,
                         "--flavour", flavour])
        err = capsys.readouterr().err
        assert code == 2 and message in err and str(src) in err, err
    assert not (tmp_path / "x.pt").exists()
    state = convert_file(torch_file, tmp_path / "ok.pt", "torchvision", flavour="tiny")
    assert load_weights(build_vgg16("tiny", num_classes=CLASSES), tmp_path / "ok.pt") == [] and state
