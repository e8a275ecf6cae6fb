"""The hidden two-stream model as one module, its fast CPU path, its export, and the agreement guard.

    model = HiddenTwoStream(spatial_vgg, stacked_stream)          # or hidden_two_stream(load_model(...))
    fused = model(clips)                                         # clips (N, 11, 3, H, W) uint8 of one video
    fast = build_fast(model, FastConfig(channels_last=True, int8_linear=True))
    int8 = build_fast(model, FastConfig(int8_linear=True, int8_conv=True), calibration=calibration_clips(dataset, split, 11, 224))
    agreement = top1_agreement(reference_scores, fast_scores)    # share of videos whose top-1 class agrees
    program = export_program(model, clips)                       # torch.export; torch.export.save(program, path)

One forward scores all N inputs of a video (the 25 windows x crops batched) and returns the
video's fused scores: each stream's pre-softmax scores averaged over the inputs, then the late
fusion (`models.fuse_scores`, release rule spatial 1 : stacked 1.5), exactly what `h2s
predict` and the evaluate stage compute chunk by chunk. Normalisation is inside, so an exported
program takes the decoded uint8 frames and needs nothing from h2s_dist.

Fast-path variants are judged by top-1 agreement with fp32 on real test videos, not by a logit
tolerance: a variant ships when at least `MIN_AGREEMENT` of the videos keep their class.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from h2s_dist.models import fuse_scores
from h2s_dist.models.motionnet import stack_frames
from h2s_dist.models.stacked import StackedOutput

MIN_AGREEMENT = 0.99
"""Top-1 agreement with fp32 a faster variant must keep (issue 17)."""


class HiddenTwoStream(nn.Module):
    """uint8 clips (N, T, 3, H, W) of one video -> fused scores (C,) of the hidden two-stream.

    What each stream scores and how it is normalised comes from the evaluate stage's stream
    table (`train/streams.py`: spatial VGG16 on the centre frame of each clip, stacked temporal
    stream on the whole clip); each stream's scores are averaged over the N inputs, then fused
    with `fusion_weights` (spatial, stacked) under `fusion_rule` (see models/fusion.py)."""

    def __init__(self, spatial: nn.Module, stacked: nn.Module, fusion_weights: tuple[float, float] = (1.0, 1.5),
                 fusion_rule: str = "release") -> None:
        # Imported here: the stream table pulls in the data readers, which `import h2s_dist.inference` need not.
        from h2s_dist.train.streams import STREAMS

        super().__init__()
        self.spatial, self.stacked = spatial, stacked
        self.fusion_weights, self.fusion_rule = tuple(fusion_weights), fusion_rule
        self._streams = {name: STREAMS[name] for name in ("spatial", "stacked")}

    def stream_scores(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(spatial (C,), stacked (C,)) float32 pre-softmax scores averaged over the N inputs."""
        scores = []
        for name, net in (("spatial", self.spatial), ("stacked", self.stacked)):
            stream = self._streams[name]
            out = net(stream.to_input(stream.inputs(clips)))
            scores.append((out.scores if isinstance(out, StackedOutput) else out).float().mean(0))
        return scores[0], scores[1]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        spatial, stacked = self.stream_scores(clips)
        return fuse_scores(spatial, stacked, self.fusion_weights, self.fusion_rule)


def hidden_two_stream(model) -> HiddenTwoStream:
    """The HiddenTwoStream of a `predict.load_model` result that holds both streams."""
    missing = {"spatial", "stacked"} - set(model.networks)
    if missing:
        from h2s_dist.predict import PredictError

        raise PredictError(f"{model.stage_uri}: a {model.kind} stage has no {' and '.join(sorted(missing))} weights; "
                           "the hidden two-stream model needs both: pass an evaluate stage (or its job)")
    return HiddenTwoStream(model.networks["spatial"], model.networks["stacked"], model.fusion_weights,
                           model.fusion_rule).eval()


# ----------------------------------------------------------------------------- fast path


@dataclasses.dataclass(frozen=True)
class FastConfig:
    """How the hidden two-stream runs on the CPU. All off: the fp32 reference."""

    channels_last: bool = False
    """NHWC weights and inputs: oneDNN's preferred convolution layout."""
    bf16: bool = False
    """bf16 autocast; only worth it with native bf16 (avx512_bf16 or AMX, see `cpu_has_bf16`)."""
    int8_linear: bool = False
    """int8 dynamic quantisation of the Linear layers (VGG16's fc6-fc8, weight-bandwidth bound)."""
    int8_conv: bool = False
    """int8 static quantisation of every convolution (MotionNet and both VGG16 feature stacks, about
    nine tenths of the time), activations int8 between layers, ranges calibrated on example clips
    (`build_fast(..., calibration=)`). Runs on torch's quantised CPU kernels (x86: AVX2 is enough)."""

    @property
    def name(self) -> str:
        on = [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]
        return "+".join(on) or "fp32"


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); emulated bf16 is only slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_configs(bf16: bool | None = None) -> list[FastConfig]:
    """fp32 first (the reference), then the variants worth trying here (bf16 only where native)."""
    bf16 = cpu_has_bf16() if bf16 is None else bf16
    out = [FastConfig(), FastConfig(channels_last=True), FastConfig(int8_linear=True),
           FastConfig(channels_last=True, int8_linear=True), FastConfig(int8_linear=True, int8_conv=True)]
    if bf16:
        out += [FastConfig(channels_last=True, bf16=True), FastConfig(channels_last=True, bf16=True, int8_linear=True)]
    return out


class _ChannelsLast(nn.Module):
    """Puts a 4-D input in channels_last before the wrapped network (the stacked stream's VGG
    gets NHWC from its channels_last convolutions on its own)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


class _Int8MotionNet(nn.Module):
    """MotionNet's input checks (float), then its network as a quantised graph (`flows_from_stack`)."""

    def __init__(self, config, network: nn.Module) -> None:
        super().__init__()
        self.config, self.network = config, network

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        return self.network(stack_frames(frames, self.config))


class _FlowsFromStack(nn.Module):
    """What torch.fx traces of a MotionNet: its network on stacked frames, without the checks."""

    def __init__(self, motionnet: nn.Module) -> None:
        super().__init__()
        self.motionnet = motionnet

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.motionnet.flows_from_stack(x)


def _with_observers(module: nn.Module, in_channels: int, mapping) -> nn.Module:
    """`module` traced by torch.fx with an observer after each op to quantise (prepare_fx)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    return prepare_fx(module, mapping, (torch.zeros(1, in_channels, 64, 64),))


def quantise_convolutions(networks: Iterable[nn.Module], calibrate: Callable[[], object]) -> None:
    """In place: every convolution of each network (a spatial VGG16 or a stacked temporal stream)
    int8, by torch.fx static quantisation under the current quantised engine's default mapping,
    activation ranges observed while `calibrate()` runs the networks on inputs like the ones they
    will score (`calibration_clips`: training videos spread over the classes).

    Each graph stays int8 from its first convolution to its last: MotionNet's network
    (`flows_from_stack`) and each VGG16's feature stack (conv1_1 ... pool5). The input checks, the
    flow normalisation and the classifiers (see `FastConfig.int8_linear`) stay float."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx

    from h2s_dist.models.stacked import StackedTemporalStream

    # Per-channel weights, 7-bit activations on x86 (no overflow without VNNI), and per-tensor
    # weights for MotionNet's transposed convolutions, which is what torch's kernels take.
    mapping = get_default_qconfig_mapping(torch.backends.quantized.engine)
    placed = []  # (owner, attribute): where each graph with observers sits until it is converted
    with warnings.catch_warnings():  # torch.ao is deprecated for torchao, which is not a dependency
        warnings.simplefilter("ignore")
        for net in networks:
            stacked = isinstance(net, StackedTemporalStream)
            vgg = net.vgg if stacked else net
            vgg.features = _with_observers(vgg.features, vgg.config.in_channels, mapping)
            placed.append((vgg, "features"))
            if stacked:
                config = net.motionnet.config
                net.motionnet = _Int8MotionNet(config, _with_observers(_FlowsFromStack(net.motionnet),
                                                                       3 * config.num_frames, mapping))
                placed.append((net.motionnet, "network"))
        with torch.no_grad():
            calibrate()  # the observers record each activation's range
        for owner, attribute in placed:
            setattr(owner, attribute, convert_fx(getattr(owner, attribute)))


CALIBRATION_VIDEOS, CALIBRATION_WINDOWS = 8, 3
"""The default calibration set: centre crops of 3 windows of each of 8 training videos."""


def calibration_clips(dataset: str, split: int | None, clip_len_frames: int, crop_size: int,
                      num_videos: int = CALIBRATION_VIDEOS, num_windows: int = CALIBRATION_WINDOWS) -> torch.Tensor:
    """uint8 clips (num_videos x num_windows, T, 3, crop, crop) to calibrate int8 on: centre crops of
    `num_windows` windows of `num_videos` videos spread over the dataset's training subset.

    Activation ranges differ far more between videos than within one (the deep layers of the
    quickstart's spatial VGG16 reach 0.12 on one video, 10.9 over ten), and a range taken from one
    video clips the others: calibrated on a single video, int8 kept the fp32 class of 4 test
    videos of 10. So the set spans the classes the networks learnt, and is never the test videos
    the result is judged on."""
    from h2s_dist.data.eval_stream import eval_loader

    loader = eval_loader(dataset, split, "train", rank=0, world_size=1, clip_len_frames=clip_len_frames,
                         crop_size=crop_size, num_windows=num_windows, num_crops=1, normalized=False,
                         max_videos=num_videos)
    return torch.cat([item.clips for item in loader])


def quantise_linear(network: nn.Module) -> nn.Module:
    """`network` with int8 dynamic quantisation of its Linear layers (weights int8, activations
    quantised on the fly): the fc layers are weight-bandwidth bound, so no calibration is needed."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao is deprecated for torchao, which is not a dependency
        warnings.simplefilter("ignore")
        return quantize_dynamic(network, {nn.Linear}, dtype=torch.qint8)


def build_fast(model: HiddenTwoStream, config: FastConfig, calibration: torch.Tensor | None = None
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A copy of `model` set up as `config` says: clips (N, T, 3, H, W) uint8 -> fused scores (C,) float32.
    `calibration` (uint8 clips) is needed by `int8_conv` and ignored otherwise."""
    fast = copy.deepcopy(model).eval()
    if config.int8_conv:
        if calibration is None:
            raise ValueError(f"FastConfig {config.name} quantises activations: pass calibration clips "
                             "(uint8 (N, T, 3, H, W) from several videos: calibration_clips)")
        quantise_convolutions([fast.spatial, fast.stacked], lambda: fast(calibration))
    if config.int8_linear:
        fast = quantise_linear(fast)
    if config.channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        fast.spatial = _ChannelsLast(fast.spatial)

    def run(clips: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            return fast(clips).float()

    return run


# ----------------------------------------------------------------------------- agreement


def top1_agreement(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Share of rows (videos) whose argmax class is the same in `candidate` as in `reference` (V, C)."""
    if reference.shape != candidate.shape or reference.dim() != 2 or not len(reference):
        raise ValueError(f"need two (V, C) score tables of the same shape with V >= 1, got "
                         f"{tuple(reference.shape)} and {tuple(candidate.shape)}")
    return float((reference.argmax(-1) == candidate.argmax(-1)).float().mean())


def video_agreement(reference: Callable[[torch.Tensor], torch.Tensor],
                    candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                    videos: Iterable[torch.Tensor]) -> dict[str, float]:
    """{candidate name: top-1 agreement with `reference`} over `videos` (each a video's uint8 clips)."""
    ref_rows, rows = [], {name: [] for name in candidates}
    for clips in videos:
        ref_rows.append(reference(clips).reshape(-1))
        for name, fn in candidates.items():
            rows[name].append(fn(clips).reshape(-1))
    reference_table = torch.stack(ref_rows) if ref_rows else torch.empty(0, 0)
    return {name: top1_agreement(reference_table, torch.stack(r) if r else torch.empty(0, 0))
            for name, r in rows.items()}


# ----------------------------------------------------------------------------- export


def export_program(model: HiddenTwoStream, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export of `model` (fp32, eval) for uint8 clips shaped like `example` (N, T, 3, H, W),
    with N (inputs per video) dynamic. The program holds only aten ops and the weights:
    `torch.export.load(path).module()(clips)` runs it without h2s_dist."""
    model = model.eval()
    num_inputs = torch.export.Dim("num_inputs", min=1, max=4096)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=({0: num_inputs},))


PROGRAM_FILE, METADATA_FILE = "hidden_two_stream.pt2", "model.json"


def export_model(model, out_dir: str) -> dict:
    """Write a `predict.load_model` result's hidden two-stream to out_dir: PROGRAM_FILE (torch.export,
    fp32 CPU) and METADATA_FILE (classes, input shape, what the output is); returns the metadata."""
    import json
    import pathlib

    network = hidden_two_stream(model).cpu()
    shape = (model.clip_len_frames, 3, model.crop_size, model.crop_size)
    example = torch.randint(0, 256, (2, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    program = export_program(network, example)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(out / PROGRAM_FILE))
    w_spatial, w_stacked = network.fusion_weights
    metadata = {
        "program": PROGRAM_FILE, "source_stage": model.stage_uri, "classes": model.classes,
        "input": {"shape": ["num_inputs", *shape], "dtype": "uint8", "layout": "N, T, RGB, H, W",
                  "what": f"a video's {model.num_windows} windows x {model.num_crops} crops of decoded frames "
                          f"resized to {model.frame_size[1]}x{model.frame_size[0]} (h2s_dist.data.transforms)"},
        "output": {"shape": [len(model.classes)], "dtype": "float32",
                   "what": f"{network.fusion_rule} fusion, spatial {w_spatial:g} : stacked {w_stacked:g}, of each "
                           "stream's scores averaged over the inputs; argmax is the predicted class"},
        "usage": "torch.export.load(path).module()(clips)",
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return metadata
