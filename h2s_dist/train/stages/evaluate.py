"""Stage `evaluate`: the test protocol (25 windows x 10 crops) for every stream, and fusion.

For each test video, the pre-softmax scores of every input are averaged per stream:
spatial (the centre frame of each window), stacked temporal (MotionNet + VGG16 on the
11-frame window) and, when given, the TV-L1 two-stage temporal stream on cached flows.
Hidden two-stream = spatial fused with stacked temporal (1 : 1.5), two-stream = spatial
fused with TV-L1 temporal. Ranks split the videos; rank 0 gathers, scores and logs:
top-1/top-5, per-class accuracy, confusion matrices, and end-to-end frames per second
(decode to scores, counting 10 frames per 11-frame window for every method alike), and
writes every video's scores per stream to `scores.npz` (also an MLflow artifact).

The streams, their weights fields, inputs and fusions are the table in
h2s_dist.train.streams; the averaging is h2s_dist.train.scoring's.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from h2s_dist import metrics as M
from h2s_dist import progress
from h2s_dist.data import storage
from h2s_dist.data.eval_stream import EvalItem
from h2s_dist.data.manifest import read_classes
from h2s_dist.models import fuse_scores
from h2s_dist.specs.evaluate import EvaluateSpec
from h2s_dist.train import dist
from h2s_dist.train.scoring import RankScores, mean_scores, score_videos, tvl1_video_scores
from h2s_dist.train.streams import SOURCES, STREAMS, Stream, fusions


def _load(stream: Stream, spec: EvaluateSpec, num_classes: int, device: torch.device) -> torch.nn.Module:
    from h2s_dist.weights import load_weights

    model = stream.build(spec, num_classes)
    load_weights(model, getattr(spec, stream.weights))
    return model.to(device).eval()


def score_rank(spec: EvaluateSpec, num_classes: int, device: torch.device) -> RankScores:
    """This rank's videos scored by every stream the spec turns on, one loader per source.
    Seconds hold every source's decode part and every stream of the table (0 when off)."""
    parts = [RankScores(seconds={
        **dict.fromkeys([s.decode_part for s in SOURCES.values() if s.decode_part], 0.0),
        **dict.fromkeys(STREAMS, 0.0),
    })]
    for source in SOURCES.values():
        streams = [s for s in STREAMS.values() if s.source == source.name and s.enabled(spec)]
        if not streams:
            continue
        scorers = {s.name: _scorer(s, _load(s, spec, num_classes, device), spec, device) for s in streams}
        loader = source.open(spec, dist.rank(), dist.world_size())
        bar = progress.build("evaluate", len(loader), unit="video", enabled=dist.is_main())  # rank 0's share
        parts.append(score_videos(loader, scorers, decode_part=source.decode_part, progress=bar))
    return RankScores.merge(parts)


def _scorer(stream: Stream, model: torch.nn.Module, spec: EvaluateSpec,
            device: torch.device) -> Callable[[EvalItem], torch.Tensor]:
    def score(item: EvalItem) -> torch.Tensor:
        return mean_scores(model, stream.inputs(item.clips), stream.to_input, device=device,
                           chunk=spec.inputs_per_forward, bf16=spec.bf16)

    return score


def _video_frames(dataset_uri: str, key: str) -> np.ndarray:
    """Every frame of one ingested video, (T, H, W, 3) uint8, read from its shard."""
    import tarfile

    from h2s_dist.data import codec
    from h2s_dist.data.manifest import read_manifest, shard_uri

    rows = read_manifest(dataset_uri).to_pylist()
    shard = next(r["shard"] for r in rows if r["key"] == key)
    sample: dict[str, bytes] = {}
    with storage.open_uri(shard_uri(dataset_uri, shard)) as raw:
        with tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                name, _, ext = member.name.partition(".")
                if name == key and member.isfile():
                    sample[ext] = tar.extractfile(member).read()
    return codec.decode_frames(sample)


def _time_tvl1_two_stage(spec: EvaluateSpec, keys: list[str], num_classes: int, device: torch.device) -> dict[str, float]:
    """Seconds of decode, TV-L1 and CNN for the two-stage baseline run end to end on `keys`."""
    vgg = _load(STREAMS["tvl1"], spec, num_classes, device)
    seconds = {"decode": 0.0, "tvl1": 0.0, "cnn": 0.0, "videos": 0.0}
    for key in keys:
        start = time.perf_counter()
        frames = _video_frames(spec.dataset, key)
        seconds["decode"] += time.perf_counter() - start
        timed = tvl1_video_scores(vgg, frames, num_windows=spec.num_windows, num_crops=spec.num_crops,
                                  crop_size=spec.crop_size, device=device, batch=spec.inputs_per_forward,
                                  bf16=spec.bf16)
        seconds["tvl1"] += timed.tvl1_s
        seconds["cnn"] += timed.cnn_s
        seconds["videos"] += 1
    return seconds


def stream_scores(
    results: RankScores, spec: EvaluateSpec
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Video keys (sorted), labels (N,) and {stream: scores (N, C)} for the table's streams
    every video has, plus their fusions under both rules (pre-softmax scores; the release
    rule's are probability sums); the headline rule's under the fusion's own name."""
    keys = sorted(results.videos)
    labels = np.array([results.videos[k].label for k in keys], dtype=np.int64)
    streams = {}
    for name in STREAMS:
        if keys and all(name in results.videos[k].scores for k in keys):
            streams[name] = np.stack([results.videos[k].scores[name] for k in keys])
    for fused, (first, second) in fusions().items():
        if first in streams and second in streams:
            for rule in ("release", "weighted_sum"):
                name = fused if rule == spec.fusion_rule else f"{fused}_{rule}"
                streams[name] = fuse_scores(
                    torch.from_numpy(streams[first]), torch.from_numpy(streams[second]), spec.fusion_weights, rule
                ).numpy()
    return keys, labels, streams


def _decode_s(stream: str, seconds: dict[str, float]) -> float:
    part = SOURCES[STREAMS[stream].source].decode_part
    return seconds[part] if part else 0.0


def protocol_fps(streams: dict[str, np.ndarray], seconds: dict[str, float], frames_scored: int) -> dict[str, float]:
    """`fps/` metrics of the scored streams: each pays its source's decode in full plus its
    own seconds; a fusion of two streams of one source pays that decode once. (The TV-L1
    fusion reads two sources: its fps comes from the two-stage run.)"""
    timing = {STREAMS[name].fps_metric: _decode_s(name, seconds) + seconds[name] for name in STREAMS if name in streams}
    for fused, (first, second) in fusions().items():
        if fused in streams and STREAMS[first].source == STREAMS[second].source:
            timing[f"fps/{fused}"] = _decode_s(first, seconds) + seconds[first] + seconds[second]
    return {name: frames_scored / secs for name, secs in timing.items() if secs > 0 and frames_scored}


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
    gathered = dist.gather_objects(score_rank(spec, len(classes), device))
    if not dist.is_main():
        return {}
    results = RankScores.merge(gathered)
    total_seconds = results.seconds
    keys, labels, streams = stream_scores(results, spec)
    # Video frames turned into scores: 10 per 11-frame window, however many crops each is seen in.
    frames_per_video = spec.num_windows * (spec.clip_len_frames - 1)
    frames_scored = len(labels) * frames_per_video
    metrics: dict[str, float] = {"eval/videos": float(len(labels)), "eval/skipped": float(len(results.skipped))}
    per_class: dict[str, list] = {"class": classes}
    for name, scores in streams.items():
        predicted = scores.argmax(1)
        matrix = M.confusion_matrix(predicted, labels, len(classes))
        metrics[f"accuracy/{name}/top1"] = M.topk_accuracy(scores, labels, 1)
        metrics[f"accuracy/{name}/top5"] = M.topk_accuracy(scores, labels, 5)
        per_class[name] = [None if np.isnan(v) else float(v) for v in M.per_class_accuracy(matrix)]
        if name in STREAMS:  # fused streams hold no pre-softmax scores
            metrics[f"confidence/{name}"] = M.mean_confidence(scores)
        if name in STREAMS or name in fusions():  # the headline rule's fusion only
            tracker.log_figure(M.confusion_figure(matrix, classes, f"{name}: confusion"), f"confusion/{name}.png")
    metrics.update(protocol_fps(streams, total_seconds, frames_scored))
    if spec.tvl1_weights and spec.tvl1_timed_videos and len(labels):
        two_stage = _time_tvl1_two_stage(spec, keys[: spec.tvl1_timed_videos], len(classes), device)
        per_video_spatial = total_seconds["spatial"] / len(labels)
        temporal_s = two_stage["decode"] + two_stage["tvl1"] + two_stage["cnn"]
        timed_frames = two_stage["videos"] * frames_per_video
        metrics["fps/tvl1_two_stage"] = timed_frames / temporal_s
        metrics["fps/two_stream_tvl1"] = timed_frames / (temporal_s + per_video_spatial * two_stage["videos"])
        metrics["fps/tvl1_flow_only"] = timed_frames / max(two_stage["tvl1"], 1e-9)
        total_seconds["tvl1_two_stage"] = two_stage
    tracker.log_metrics(metrics, step=0)
    tracker.log_table(per_class, "per_class_accuracy.json")
    report = {"metrics": metrics, "per_class": per_class, "skipped": [s.to_dict() for s in results.skipped],
              "seconds": total_seconds}
    report_uri = storage.join(output_uri, "evaluation.json")
    storage.write_bytes(report_uri, json.dumps(report, indent=2).encode())
    tracker.log_dict(report, "evaluation.json")
    scores_uri = storage.join(output_uri, "scores.npz")
    scores = scores_npz(keys, labels, streams, classes)
    storage.write_bytes(scores_uri, scores)
    tracker.log_bytes(scores, "scores.npz")
    return {"metrics": metrics, "report": report_uri, "scores": scores_uri}
