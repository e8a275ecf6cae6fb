"""`h2s predict`: a finished job's networks on your own videos (top-5 classes, speed, flow).

    model = load_model("quickstart")                      # see `resolve_stage` for what names a model
    result = predict_video(model, "clip.mp4")             # VideoPrediction: top-5, fps
    print(format_prediction(result))
    write_flow_video(model, "clip.mp4", "clip_flow.mp4")  # frames beside MotionNet's flow

What a model is: the outputs of a finished `evaluate`, `finetune_stacked` or `train_spatial`
stage. Its folder holds `outputs.json` and `spec.json` (the resolved spec, written by the
runner), and the spec gives everything else: the weights (evaluate: `stacked_weights` and
`spatial_weights`; finetune: its `stacked_temporal` output; spatial: its `spatial` output), the
flavours, the clip length, the crop size and the dataset, whose `classes.json` names the
classes and whose manifest gives the test frame size (the size most of its videos were
ingested at). An evaluate stage also gives its protocol (windows, crops) and its fusion.

Scoring is the evaluate stage's: `transforms.eval_window_starts` windows x `window_crops`
crops, each stream's inputs and network input from the stream table (`train/streams.py`),
averaged by `scoring.mean_scores`, the hidden two-stream fusion by `models.fuse_scores`.
Probabilities: the release rule's fused softmaxes divided by the sum of the weights (a
weighted mean of the two streams' probabilities); a single stream's softmax otherwise.
Frames per second are the evaluate stage's: 10 frames per 11-frame window, decode to scores.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from h2s_dist.config import JOBS_ROOT
from h2s_dist.data import storage, transforms
from h2s_dist.data.video import VideoDecodeError, read_video

OUTPUTS_FILE, SPEC_FILE, SUCCESS_FILE = "outputs.json", "spec.json", "_SUCCESS"
# A job's workspace holds several stage folders: the one predict uses, best first.
MODEL_KINDS = ("evaluate", "finetune_stacked", "train_spatial")
PAPER_WINDOWS, PAPER_CROPS = 25, 10
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class PredictError(ValueError):
    """A model or video predict cannot use; the message names it and says what to do."""


@dataclass
class PredictModel:
    """The networks of one stage folder and how to feed them (see the module docstring)."""

    stage_uri: str
    kind: str
    classes: list[str]
    frame_size: tuple[int, int]
    """(height, width) every decoded frame is resized to: the dataset's test frames."""
    clip_len_frames: int
    crop_size: int
    num_windows: int
    num_crops: int
    networks: dict[str, torch.nn.Module] = field(default_factory=dict)
    """Stream name of the stream table (`spatial`, `stacked`) -> network in eval mode."""
    fusion_weights: tuple[float, float] = (1.0, 1.5)
    fusion_rule: str = "release"
    device: torch.device = torch.device("cpu")
    inputs_per_forward: int = 50
    dataset_uri: str | None = None
    """The dataset the stage trained or evaluated on (int8 calibrates on its training videos)."""
    split: int | None = None


@dataclass
class VideoPrediction:
    """One video's result: top (class, probability) best first, its decode-to-scores speed."""

    path: str
    top: list[tuple[str, float]]
    num_frames: int
    source_size: tuple[int, int]
    """(height, width) of the file's frames."""
    fps_scored: float
    """Frames scored per second, decode to scores (10 per 11-frame window, as `evaluate`)."""
    seconds: dict[str, float]
    method: str


# ----------------------------------------------------------------------------- the model


def resolve_stage(model: str, tracking_uri: str | None = None, jobs_root: str = JOBS_ROOT) -> str:
    """The stage folder `model` names, tried in this order:

    1. a folder (path or URI) holding outputs.json: that stage;
    2. a job's workspace (a folder of stage folders), or a job name (its default workspace
       `<jobs_root>/<name>`): its newest finished stage of the first kind in MODEL_KINDS;
    3. an MLflow run id: a stage run's `h2s.output` tag, or a job run's `h2s.workspace` (as 2.)."""
    if storage.exists(storage.join(model, OUTPUTS_FILE)):
        return model.rstrip("/")
    for workspace in (model, str(pathlib.Path(jobs_root) / model)):
        if storage.local_path_or_none(workspace) and os.path.isdir(storage.local_path_or_none(workspace)):
            return _stage_in_workspace(workspace)
    if _RUN_ID.match(model):
        tags = _run_tags(model, tracking_uri)
        if "h2s.output" in tags:
            return tags["h2s.output"]
        if "h2s.workspace" in tags:
            return _stage_in_workspace(tags["h2s.workspace"])
        raise PredictError(f"--model {model}: MLflow run has no h2s.output or h2s.workspace tag (not an h2s run)")
    raise PredictError(
        f"--model {model}: not a stage folder (no {OUTPUTS_FILE}), a workspace, a job name under {jobs_root}/ "
        "or an MLflow run id; run the job first (e.g. `h2s run jobs/quickstart.yaml`) or pass its stage folder"
    )


def _stage_in_workspace(workspace: str) -> str:
    finished = []
    for success in pathlib.Path(storage.local_path_or_none(workspace)).glob(f"*/{SUCCESS_FILE}"):
        record = json.loads(success.read_text())
        if record.get("kind") in MODEL_KINDS and (success.parent / SPEC_FILE).is_file():
            finished.append((-MODEL_KINDS.index(record["kind"]), record.get("finished_at", ""), str(success.parent)))
    if not finished:
        raise PredictError(
            f"{workspace}: no finished {'/'.join(MODEL_KINDS)} stage with a {SPEC_FILE}; run the job "
            "(`h2s run SPEC`: finished stages are reused and get their spec.json) or pass a stage folder"
        )
    return max(finished)[2]


def _run_tags(run_id: str, tracking_uri: str | None) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    from h2s_dist.tracking import resolve_tracking_uri

    try:
        return dict(MlflowClient(resolve_tracking_uri(tracking_uri)).get_run(run_id).data.tags)
    except Exception as err:  # mlflow raises its own exception types for an unknown run
        raise PredictError(f"--model {run_id}: no such MLflow run in {resolve_tracking_uri(tracking_uri)} ({err})") from err


def _read_json(uri: str) -> dict:
    if not storage.exists(uri):
        raise PredictError(f"{uri} not found: rerun the job (`h2s run SPEC`; finished stages are reused "
                           "and get their spec.json)")
    return json.loads(storage.read_bytes(uri))


def dataset_frame_size(dataset_uri: str) -> tuple[int, int]:
    """(height, width) most of the dataset's videos were ingested at: the size its test crops come from."""
    from h2s_dist.data.manifest import read_manifest

    table = read_manifest(dataset_uri)
    sizes = Counter(zip(table.column("height").to_pylist(), table.column("width").to_pylist()))
    if not sizes:
        raise PredictError(f"{dataset_uri}: the manifest lists no videos, so the test frame size is unknown")
    return sizes.most_common(1)[0][0]


def load_model(model: str, *, tracking_uri: str | None = None, device: str = "auto", jobs_root: str = JOBS_ROOT,
               num_windows: int | None = None, num_crops: int | None = None) -> PredictModel:
    """The networks of the stage `model` names (`resolve_stage`), weights loaded, in eval mode.
    num_windows / num_crops override the protocol (evaluate: its own; otherwise the paper's 25 x 10)."""
    from h2s_dist.data.manifest import read_classes
    from h2s_dist.specs.common import MotionNetSpec
    from h2s_dist.train.builders import build_stacked
    from h2s_dist.models import build_vgg16
    from h2s_dist.weights import load_weights

    stage = resolve_stage(model, tracking_uri, jobs_root)
    spec = _read_json(storage.join(stage, SPEC_FILE))
    outputs = _read_json(storage.join(stage, OUTPUTS_FILE))
    kind = spec.get("kind")
    if kind == "evaluate":
        data, weights = spec, {"stacked": spec.get("stacked_weights"), "spatial": spec.get("spatial_weights")}
    elif kind == "finetune_stacked":
        data, weights = spec["data"], {"stacked": outputs.get("stacked_temporal")}
    elif kind == "train_spatial":
        data, weights = spec["data"], {"spatial": outputs.get("spatial")}
    else:
        raise PredictError(f"{stage}: a {kind} stage holds no action classifier; use a {'/'.join(MODEL_KINDS)} stage")
    weights = {name: uri for name, uri in weights.items() if uri}
    if not weights:
        raise PredictError(f"{stage}: its spec names no stacked or spatial weights to predict with")
    # The spatial stream scores the centre frame of 11-frame windows when it stands alone.
    clip_len = data["clip_len_frames"] if "stacked" in weights else max(data["clip_len_frames"], 11)
    classes = read_classes(data["dataset"])
    picked = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    networks = {}
    for name, uri in weights.items():
        if name == "stacked":
            net = build_stacked(MotionNetSpec.model_validate(spec["motionnet"]), clip_len, spec["vgg_flavour"], len(classes))
        else:
            net = build_vgg16(spec["vgg_flavour"], in_channels=3, num_classes=len(classes))
        load_weights(net, uri)
        networks[name] = net.to(picked).eval()
    return PredictModel(
        stage_uri=stage, kind=kind, classes=classes, frame_size=dataset_frame_size(data["dataset"]),
        clip_len_frames=clip_len, crop_size=data["crop_size"],
        num_windows=num_windows or spec.get("num_windows", PAPER_WINDOWS),
        num_crops=num_crops or spec.get("num_crops", PAPER_CROPS), networks=networks,
        fusion_weights=tuple(spec.get("fusion_weights", (1.0, 1.5))), fusion_rule=spec.get("fusion_rule", "release"),
        device=picked, inputs_per_forward=spec.get("inputs_per_forward", 50), dataset_uri=data["dataset"],
        split=data.get("split"),
    )


# ----------------------------------------------------------------------------- one video


def decode(model: PredictModel, path: str | os.PathLike) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(frames (T, H, W, 3) uint8 at the model's test size, the file's frame rate, its (H, W)).
    Raises PredictError naming the file when it is missing, not a video, or shorter than a clip."""
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PredictError(f"{path}: no such file")
    try:
        with av.open(path) as container:
            stream = container.streams.video[0] if container.streams.video else None
            source_size = (stream.height, stream.width) if stream else (0, 0)
        height, width = model.frame_size
        video = read_video(path, size=(width, height))
    except (VideoDecodeError, av.FFmpegError, OSError) as err:
        raise PredictError(f"{path}: cannot be read as a video ({getattr(err, 'reason', err)})") from err
    if len(video.frames) < model.clip_len_frames:
        raise PredictError(f"{path}: {len(video.frames)} frames decoded; the model reads windows of "
                           f"{model.clip_len_frames} frames, so it needs at least that many")
    return video.frames, video.fps, source_size


def protocol_inputs(model: PredictModel, num_frames: int, fast: bool) -> tuple[list[int], int]:
    """(window starts, crops per window): the model's protocol, or one centre window and crop."""
    if fast:
        return [max(num_frames - model.clip_len_frames, 0) // 2], 1
    return transforms.eval_window_starts(num_frames, model.clip_len_frames, model.num_windows), model.num_crops


def stream_scores(model: PredictModel, frames: np.ndarray, starts: list[int], num_crops: int) -> tuple[dict, dict]:
    """({stream: mean pre-softmax scores (C,)}, {stream: seconds}) over the windows x crops."""
    from h2s_dist.train.scoring import mean_scores
    from h2s_dist.train.streams import STREAMS

    crops, _ = transforms.window_crops(frames, starts, model.clip_len_frames, model.crop_size, num_crops)
    clips = torch.from_numpy(crops).movedim(-1, -3)  # (N, T, 3, h, w) uint8, as the eval reader gives
    scores, seconds = {}, {}
    for name, net in model.networks.items():
        started = time.perf_counter()
        stream = STREAMS[name]
        scores[name] = mean_scores(net, stream.inputs(clips), stream.to_input, device=model.device,
                                   chunk=model.inputs_per_forward)
        seconds[name] = time.perf_counter() - started
    return scores, seconds


def probabilities(model: PredictModel, scores: dict[str, torch.Tensor]) -> tuple[torch.Tensor, str]:
    """(class probabilities (C,), method): the hidden two-stream fusion when both streams are there."""
    from h2s_dist.models import fuse_scores

    if len(scores) == 1:
        name, only = next(iter(scores.items()))
        return torch.softmax(only, -1), name
    fused = fuse_scores(scores["spatial"], scores["stacked"], model.fusion_weights, model.fusion_rule)
    w_spatial, w_temporal = model.fusion_weights
    method = f"hidden two-stream ({model.fusion_rule} fusion, spatial {w_spatial:g} : stacked {w_temporal:g})"
    if model.fusion_rule == "release":
        return fused / (w_spatial + w_temporal), method
    return torch.softmax(fused, -1), method


def predict_video(model: PredictModel, path: str | os.PathLike, *, fast: bool = False, top_k: int = 5) -> VideoPrediction:
    """Top-k classes of one video file under the model's protocol (or `fast`: one centre window, centre crop)."""
    started = time.perf_counter()
    frames, _, source_size = decode(model, path)
    seconds = {"decode": time.perf_counter() - started}
    starts, num_crops = protocol_inputs(model, len(frames), fast)
    scores, stream_seconds = stream_scores(model, frames, starts, num_crops)
    seconds.update(stream_seconds)
    probs, method = probabilities(model, scores)
    values, index = probs.topk(min(top_k, len(model.classes)))
    frames_scored = len(starts) * (model.clip_len_frames - 1)
    return VideoPrediction(
        path=os.fspath(path), top=[(model.classes[i], float(v)) for v, i in zip(values.tolist(), index.tolist())],
        num_frames=len(frames), source_size=source_size, fps_scored=frames_scored / max(sum(seconds.values()), 1e-9),
        seconds=seconds, method=f"{method}, {len(starts)} windows x {num_crops} crops",
    )


def quantise_for_cpu(model: PredictModel) -> int:
    """In place: the model's networks with int8 convolutions and fc layers (`inference.FastConfig`
    int8_conv + int8_linear, torch's quantised CPU kernels), activation ranges calibrated on
    `inference.calibration_clips` of the model's dataset (training videos spread over its classes);
    returns the number of calibration clips. `bench/speed.py` measures the speed-up and the top-1
    agreement with fp32."""
    from h2s_dist.inference import calibration_clips, quantise_convolutions, quantise_linear
    from h2s_dist.train.streams import STREAMS

    if model.device.type != "cpu":
        raise PredictError(f"int8 runs on torch's quantised CPU kernels, not on {model.device}; pass --device cpu")
    try:
        clips = calibration_clips(model.dataset_uri, model.split, model.clip_len_frames, model.crop_size)
    except (OSError, ValueError) as err:
        raise PredictError(f"int8 calibrates on the training videos of {model.dataset_uri}, which cannot be read "
                           f"here ({err}); run without --int8") from err

    def calibrate() -> None:
        for name, net in model.networks.items():
            net(STREAMS[name].to_input(STREAMS[name].inputs(clips)))

    quantise_convolutions(model.networks.values(), calibrate)
    for name, net in model.networks.items():
        model.networks[name] = quantise_linear(net)
    return len(clips)


def format_prediction(result: VideoPrediction) -> str:
    """The lines `h2s predict` prints for one video."""
    height, width = result.source_size
    parts = ", ".join(f"{name} {secs:.2f} s" for name, secs in result.seconds.items())
    lines = [f"{result.path}: {result.num_frames} frames ({width}x{height}); {result.method}"]
    width_name = max(len(name) for name, _ in result.top)
    lines += [f"  {rank}. {name:<{width_name}}  {p:.3f}" for rank, (name, p) in enumerate(result.top, 1)]
    lines.append(f"  speed: {result.fps_scored:.1f} fps, decode to scores ({parts})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- flow video


def motionnet_flows(model: PredictModel, frames: np.ndarray, batch: int = 4) -> np.ndarray:
    """MotionNet's flow between every pair of consecutive frames: (T - 1, H, W, 2) float32 pixels,
    u right, v down, flow t maps frame t to t + 1. Windows of clip_len frames start every clip_len - 1
    frames (the last one flush with the end); frames are edge-padded to MotionNet's size multiple."""
    from h2s_dist.frames import normalize
    from h2s_dist.models.motionnet import full_resolution_flow
    from h2s_dist.train.flow_eval import pad_to_multiple

    _need_motionnet(model)
    motionnet = model.networks["stacked"].motionnet
    clip_len, (height, width) = model.clip_len_frames, frames.shape[1:3]
    starts = list(range(0, len(frames) - clip_len + 1, clip_len - 1))
    if starts[-1] + clip_len < len(frames):
        starts.append(len(frames) - clip_len)
    padded = pad_to_multiple(frames)  # edge-padded bottom/right, as every MotionNet flow is scored
    flows = np.zeros((len(frames) - 1, height, width, 2), np.float32)
    with torch.no_grad():
        for first in range(0, len(starts), batch):
            chunk = starts[first:first + batch]
            clips = torch.from_numpy(np.stack([padded[s:s + clip_len] for s in chunk])).movedim(-1, -3)
            x = normalize(clips.to(model.device))
            flow = full_resolution_flow(motionnet(x)[-1], padded.shape[1:3])
            flow = flow[..., :height, :width].permute(0, 1, 3, 4, 2).cpu().numpy()
            for start, window in zip(chunk, flow):
                flows[start:start + clip_len - 1] = window  # a later window overwrites the overlap
    return flows


def _need_motionnet(model: PredictModel) -> None:
    if "stacked" not in model.networks:
        raise PredictError(f"{model.stage_uri}: --flow-video needs MotionNet, and this {model.kind} stage has "
                           "no stacked weights; use an evaluate or finetune_stacked stage")


def write_flow_video(model: PredictModel, path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write frame t beside MotionNet's flow t -> t + 1 in Middlebury colours (one colour scale
    for the whole video: its largest flow), at the input's frame rate; returns the frame count (T - 1)."""
    from h2s_dist.data.flow_io import flow_to_color
    from h2s_dist.data.video import write_video

    _need_motionnet(model)
    frames, fps, _ = decode(model, path)
    flows = motionnet_flows(model, frames)
    max_flow = max(float(np.hypot(flows[..., 0], flows[..., 1]).max()), 1e-3)
    colours = np.stack([flow_to_color(f, max_flow) for f in flows])
    side_by_side = np.concatenate([frames[:-1], colours], axis=2)
    height, width = side_by_side.shape[1:3]
    write_video(out_path, side_by_side[:, : height - height % 2, : width - width % 2], fps if fps > 0 else 25.0)
    return len(side_by_side)
