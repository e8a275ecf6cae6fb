"""Stage `ingest`: a video corpus -> WebDataset shards + manifest, as a job stage.

It wraps `h2s_dist.data.ingest.ingest` (same options as `h2s ingest`). The dataset goes to
`output` when given (a shared location such as s3://bucket/ucf101, ingested once for many
jobs), else into the stage's own output folder. A rerun resumes: finished shards are kept.

    - name: data
      kind: ingest
      source: synthetic
      synthetic: {num_videos: 64, num_frames: 24, height: 64, width: 80}
"""

from __future__ import annotations

from typing import Any

from h2s_dist.specs.driver import IngestSpec


def listing_of(spec: IngestSpec):
    """The SourceListing the spec describes."""
    from h2s_dist.data.ingest import build_listing

    return build_listing(spec.source, spec.root, spec.splits, spec.synthetic.model_dump())


def run(spec: IngestSpec, tracker, output_uri: str) -> dict[str, Any]:
    """Ingest; outputs {"dataset", "videos", "skipped", "shards", "manifest", "metrics"}."""
    from h2s_dist.data.ingest import ingest
    from h2s_dist.data.ingest_defaults import DEFAULT_SEGMENT_FRAMES

    dataset_uri = spec.output or output_uri
    tracker.log_params(spec.model_dump(mode="json"))
    tracker.set_tags({"h2s.stage_kind": spec.kind})
    segment_frames = DEFAULT_SEGMENT_FRAMES.get(spec.source) if spec.segment_frames is None else spec.segment_frames
    report = ingest(
        listing_of(spec), dataset_uri, encoding=spec.encoding, size=spec.size, min_frames=spec.min_frames,
        quality=spec.quality, shard_target_bytes=int(spec.shard_size_mb * 2**20),
        segment_frames=None if segment_frames == "whole" else segment_frames,
        segment_overlap_frames=spec.segment_overlap_frames, num_tasks=spec.num_tasks,
        resume=True, progress=True,
    )
    metrics = {
        "ingest/videos": float(report.num_ok),
        "ingest/samples": float(report.num_samples),
        "ingest/skipped": float(report.num_skipped),
        "ingest/shards": float(report.num_shards),
        "ingest/stored_mb": report.stored_bytes / 1e6,
        "ingest/seconds": float(report.seconds),
    }
    tracker.log_metrics(metrics, step=0)
    tracker.log_dict(report.to_dict(), "ingest_report.json")
    return {
        "dataset": dataset_uri,
        "videos": report.num_ok,
        "skipped": report.num_skipped,
        "shards": report.num_shards,
        "manifest": report.manifest_uri,
        "metrics": metrics,
    }
