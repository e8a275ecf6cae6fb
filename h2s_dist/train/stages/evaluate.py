"""Stage `evaluate`: the test protocol (25 windows x 10 crops) for every stream, and fusion.

For each test video, the pre-softmax scores of every input are averaged per stream:
spatial (the centre frame of each window), stacked temporal (MotionNet + VGG16 on the
11-frame window) and, when given, the TV-L1 two-stage temporal stream on cached flows.
Hidden two-stream = spatial fused with stacked temporal (1 : 1.5), two-stream = spatial
fused with TV-L1 temporal. Ranks split the videos; rank 0 gathers, scores and logs:
top-1/top-5, per-class accuracy, confusion matrices, and end-to-end frames per second
(decode to scores, counting 10 frames per 11-frame window for every method alike), and
writes every video's scores per stream to `scores.npz` (also an MLflow artifact).
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
import torch

from h2s_dist import frames as frame_conv
from h2s_dist import metrics as M
from h2s_dist.data import storage
from h2s_dist.data.manifest import read_classes
from h2s_dist.data.shards import eval_loader
from h2s_dist.models import build_vgg16, fuse_scores
from h2s_dist.train import dist
from h2s_dist.specs.evaluate import EvaluateSpec
from h2s_dist.train.builders import build_stacked, flow_stack_channels


def _mean_scores(model: torch.nn.Module, inputs: torch.Tensor, spec: EvaluateSpec, device: torch.device, stacked: bool) -> np.ndarray:
    """Average pre-softmax scores over all inputs of one video, `inputs_per_forward` at a time."""
    total = None
    for chunk in inputs.split(spec.inputs_per_forward):
        x = frame_conv.normalize(chunk.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.bf16):
            out = model(x)
        scores = (out.scores if stacked else out).float().sum(0)
        total = scores if total is None else total + scores
    return (total / inputs.shape[0]).cpu().numpy()


def _load(model: torch.nn.Module, uri: str, device: torch.device) -> torch.nn.Module:
    from h2s_dist.weights import load_weights

    load_weights(model, uri)
    return model.to(device).eval()


def _score_frames(spec: EvaluateSpec, num_classes: int, device: torch.device) -> tuple[dict[str, dict], dict[str, float]]:
    """{key: {"label", "spatial", "stacked"}} for this rank's videos, and seconds per part."""
    spatial = stacked = None
    if spec.spatial_weights:
        spatial = _load(build_vgg16(spec.vgg_flavour, 3, num_classes), spec.spatial_weights, device)
    if spec.stacked_weights:
        stacked = _load(build_stacked(spec.motionnet, spec.clip_len_frames, spec.vgg_flavour, num_classes),
                        spec.stacked_weights, device)
    seconds = {"decode": 0.0, "spatial": 0.0, "stacked": 0.0}
    results: dict[str, dict] = {}
    if spatial is None and stacked is None:
        return results, seconds
    loader = eval_loader(
        spec.dataset, spec.split, spec.subset, rank=dist.rank(), world_size=dist.world_size(),
        clip_len_frames=spec.clip_len_frames, crop_size=spec.crop_size, num_windows=spec.num_windows,
        num_crops=spec.num_crops, num_workers=spec.loader_workers, normalized=False,
    )
    items = iter(loader)
    with torch.no_grad():
        while True:
            start = time.perf_counter()
            item = next(items, None)
            seconds["decode"] += time.perf_counter() - start
            if item is None:
                break
            entry: dict[str, Any] = {"label": item.label}
            if spatial is not None:
                start = time.perf_counter()
                centre = item.clips[:, item.clips.shape[1] // 2]  # one frame per window and crop
                entry["spatial"] = _mean_scores(spatial, centre, spec, device, stacked=False)
                seconds["spatial"] += time.perf_counter() - start
            if stacked is not None:
                start = time.perf_counter()
                entry["stacked"] = _mean_scores(stacked, item.clips, spec, device, stacked=True)
                seconds["stacked"] += time.perf_counter() - start
            results[item.key] = entry
    if loader.skipped:
        results["__skipped__"] = {"skipped": loader.skipped}
    return results, seconds


def _score_tvl1(spec: EvaluateSpec, num_classes: int, device: torch.device) -> tuple[dict[str, dict], float]:
    if not (spec.tvl1_weights and spec.tvl1_flows):
        return {}, 0.0
    from h2s_dist.train.scoring import tvl1_eval_scores

    vgg = _load(build_vgg16(spec.vgg_flavour, flow_stack_channels(spec.clip_len_frames), num_classes), spec.tvl1_weights, device)
    start = time.perf_counter()
    scores = tvl1_eval_scores(
        vgg, spec.tvl1_flows, spec.split, spec.subset, rank=dist.rank(), world_size=dist.world_size(),
        num_windows=spec.num_windows, num_crops=spec.num_crops, crop_size=spec.crop_size, device=device,
        batch=spec.inputs_per_forward,
    )
    return {key: {"label": label, "tvl1": s.cpu().numpy()} for key, (label, s) in scores.items()}, time.perf_counter() - start


def _video_frames(dataset_uri: str, key: str) -> np.ndarray:
    """Every frame of one ingested video, (T, H, W, 3) uint8, read from its shard."""
    import posixpath
    import tarfile

    from h2s_dist.data import codec
    from h2s_dist.data.manifest import read_manifest

    rows = read_manifest(dataset_uri).to_pylist()
    shard = next(r["shard"] for r in rows if r["key"] == key)
    sample: dict[str, bytes] = {}
    with storage.open_uri(storage.join(dataset_uri, "shards", posixpath.basename(shard))) as raw:
        with tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                name, _, ext = member.name.partition(".")
                if name == key and member.isfile():
                    sample[ext] = tar.extractfile(member).read()
    return codec.decode_frames(sample)


def _time_tvl1_two_stage(spec: EvaluateSpec, keys: list[str], num_classes: int, device: torch.device) -> dict[str, float]:
    """Seconds of decode, TV-L1 and CNN for the two-stage baseline run end to end on `keys`."""
    from h2s_dist.train.scoring import tvl1_video_scores

    vgg = _load(build_vgg16(spec.vgg_flavour, flow_stack_channels(spec.clip_len_frames), num_classes), spec.tvl1_weights, device)
    seconds = {"decode": 0.0, "tvl1": 0.0, "cnn": 0.0, "videos": 0.0}
    for key in keys:
        start = time.perf_counter()
        frames = _video_frames(spec.dataset, key)
        seconds["decode"] += time.perf_counter() - start
        timed = tvl1_video_scores(vgg, frames, num_windows=spec.num_windows, num_crops=spec.num_crops,
                                  crop_size=spec.crop_size, device=device, batch=spec.inputs_per_forward)
        seconds["tvl1"] += timed.tvl1_s
        seconds["cnn"] += timed.cnn_s
        seconds["videos"] += 1
    return seconds


def _merge(parts: list[dict[str, dict]]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for part in parts:
        for key, entry in part.items():
            merged.setdefault(key, {}).update(entry)
    return merged


def stream_scores(
    results: dict[str, dict], spec: EvaluateSpec
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Video keys (sorted), labels (N,) and {stream: scores (N, C)} for the streams every
    video has, plus fusions (pre-softmax scores; the release rule's are probability sums)."""
    keys = sorted(k for k in results if not k.startswith("__"))
    labels = np.array([results[k]["label"] for k in keys], dtype=np.int64)
    streams = {}
    for name in ("spatial", "stacked", "tvl1"):
        if keys and all(name in results[k] for k in keys):
            streams[name] = np.stack([results[k][name] for k in keys])
    fusions = {"hidden_two_stream": "stacked", "two_stream_tvl1": "tvl1"}
    for fused, temporal in fusions.items():
        if "spatial" in streams and temporal in streams:
            for rule in ("release", "weighted_sum"):
                name = fused if rule == spec.fusion_rule else f"{fused}_{rule}"
                streams[name] = fuse_scores(
                    torch.from_numpy(streams["spatial"]), torch.from_numpy(streams[temporal]), spec.fusion_weights, rule
                ).numpy()
    return keys, labels, streams


def scores_npz(keys: list[str], labels: np.ndarray, streams: dict[str, np.ndarray], classes: list[str]) -> bytes:
    """Every video's scores as .npz bytes: `keys`, `labels`, `classes` and one (N, C) array
    per stream, to re-fuse with other weights or study errors without scoring again."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, keys=np.array(keys), labels=labels, classes=np.array(classes), **streams)
    return buffer.getvalue()


def run(spec: EvaluateSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    device = dist.pick_device(spec.scaling.use_gpu)
    tracker.log_params(spec.model_dump(mode="json"))
    tracker.set_tags({"h2s.stage_kind": spec.kind})
    classes = read_classes(spec.dataset)
    frame_results, seconds = _score_frames(spec, len(classes), device)
    tvl1_results, seconds["tvl1"] = _score_tvl1(spec, len(classes), device)
    gathered = dist.gather_objects((_merge([frame_results, tvl1_results]), seconds))
    if not dist.is_main():
        return {}
    results = _merge([r for r, _ in gathered])
    skipped = results.pop("__skipped__", {}).get("skipped", [])
    total_seconds = {part: sum(s[part] for _, s in gathered) for part in seconds}
    keys, labels, streams = stream_scores(results, spec)
    # Video frames turned into scores: 10 per 11-frame window, however many crops each is seen in.
    frames_per_video = spec.num_windows * (spec.clip_len_frames - 1)
    frames_scored = len(labels) * frames_per_video
    metrics: dict[str, float] = {"eval/videos": float(len(labels)), "eval/skipped": float(len(skipped))}
    per_class: dict[str, list] = {"class": classes}
    for name, scores in streams.items():
        predicted = scores.argmax(1)
        matrix = M.confusion_matrix(predicted, labels, len(classes))
        metrics[f"accuracy/{name}/top1"] = M.topk_accuracy(scores, labels, 1)
        metrics[f"accuracy/{name}/top5"] = M.topk_accuracy(scores, labels, 5)
        per_class[name] = [None if np.isnan(v) else float(v) for v in M.per_class_accuracy(matrix)]
        if name in ("spatial", "stacked", "tvl1"):  # fused streams hold no pre-softmax scores
            metrics[f"confidence/{name}"] = M.mean_confidence(scores)
        if name in ("spatial", "stacked", "tvl1", "hidden_two_stream", "two_stream_tvl1"):
            tracker.log_figure(M.confusion_figure(matrix, classes, f"{name}: confusion"), f"confusion/{name}.png")
    # Decode is shared by the frame streams; each method is charged for it in full.
    decode = total_seconds["decode"]
    timing = {
        "spatial": decode + total_seconds["spatial"],
        "stacked": decode + total_seconds["stacked"],
        "hidden_two_stream": decode + total_seconds["spatial"] + total_seconds["stacked"],
        "tvl1_cached": total_seconds["tvl1"],
    }
    for name, secs in timing.items():
        if secs > 0 and frames_scored:
            metrics[f"fps/{name}"] = frames_scored / secs
    if spec.tvl1_weights and spec.tvl1_timed_videos and len(labels):
        timed_keys = sorted(k for k in results if not k.startswith("__"))[: spec.tvl1_timed_videos]
        two_stage = _time_tvl1_two_stage(spec, timed_keys, len(classes), device)
        per_video_spatial = total_seconds["spatial"] / len(labels)
        temporal_s = two_stage["decode"] + two_stage["tvl1"] + two_stage["cnn"]
        timed_frames = two_stage["videos"] * frames_per_video
        metrics["fps/tvl1_two_stage"] = timed_frames / temporal_s
        metrics["fps/two_stream_tvl1"] = timed_frames / (temporal_s + per_video_spatial * two_stage["videos"])
        metrics["fps/tvl1_flow_only"] = timed_frames / max(two_stage["tvl1"], 1e-9)
        total_seconds["tvl1_two_stage"] = two_stage
    tracker.log_metrics(metrics, step=0)
    tracker.log_table(per_class, "per_class_accuracy.json")
    report = {"metrics": metrics, "per_class": per_class, "skipped": skipped, "seconds": total_seconds}
    report_uri = storage.join(output_uri, "evaluation.json")
    storage.write_bytes(report_uri, json.dumps(report, indent=2).encode())
    tracker.log_dict(report, "evaluation.json")
    scores_uri = storage.join(output_uri, "scores.npz")
    scores = scores_npz(keys, labels, streams, classes)
    storage.write_bytes(scores_uri, scores)
    tracker.log_bytes(scores, "scores.npz")
    return {"metrics": metrics, "report": report_uri, "scores": scores_uri}
