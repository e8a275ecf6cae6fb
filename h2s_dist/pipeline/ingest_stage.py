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

import sys
from typing import Any, Literal

from pydantic import Field, model_validator

from h2s_dist.train.specs import PositiveInt, ScalingSpec, Strict


class SyntheticSourceSpec(Strict):
    """The synthetic motion dataset (h2s_dist.data.synthetic), rendered in memory."""

    num_videos: PositiveInt = 64
    """Number of videos; video i has label i % 9 (the motion classes)."""
    num_frames: int = Field(32, ge=2)
    """Frames per video."""
    height: PositiveInt = 128
    """Frame height in pixels (even)."""
    width: PositiveInt = 160
    """Frame width in pixels (even)."""
    seed: int = 0
    """Base seed of the videos."""
    shared_scenes: bool = False
    """True: the 9 videos of a round (one per class) film the same scene, so appearance
    carries no label even for a network that memorises its training videos."""


class IngestSpec(Strict):
    """Encode a corpus into the dataset layout every training stage reads."""

    kind: Literal["ingest"] = "ingest"
    """Stage kind."""
    source: Literal["ucf101", "hmdb51", "videos", "synthetic"]
    """ucf101 / hmdb51 (with split lists), videos (any files, unlabeled) or synthetic."""
    root: str | None = None
    """ucf101/hmdb51: the dataset's root folder; videos: a folder, a glob or a text file of paths."""
    splits: str | None = None
    """ucf101/hmdb51: folder of the official split lists; null = no splits."""
    synthetic: SyntheticSourceSpec = SyntheticSourceSpec()
    """Options of the synthetic source."""
    output: str | None = None
    """Dataset URI to write (path, file:// or s3://); null = this stage's output folder."""
    encoding: Literal["jpeg", "mp4"] = "jpeg"
    """jpeg: JPEG frame stack (fast window decode); mp4: H.264 (about 10x smaller)."""
    size: tuple[PositiveInt, PositiveInt] | None = (340, 256)
    """(width, height) every frame is resized to; null keeps the source size. Synthetic videos
    keep their size unless `size` is given."""
    min_frames: PositiveInt = 11
    """Videos with fewer frames are skipped."""
    quality: int | None = None
    """JPEG quality or x264 CRF; null = the codec's default."""
    shard_size_mb: float = Field(64.0, gt=0)
    """Target shard size in MiB."""
    decode_workers: int = Field(2, ge=0)
    """Decode processes (0 = in this process)."""
    scaling: ScalingSpec = ScalingSpec()
    """Always in the driver process (num_workers 0); parallelism is `decode_workers`."""

    @model_validator(mode="before")
    @classmethod
    def _synthetic_keeps_its_size(cls, data: Any) -> Any:
        # A before-validator: assigning in an after-validator would re-validate (validate_assignment).
        if isinstance(data, dict) and data.get("source") == "synthetic" and "size" not in data:
            data = {**data, "size": None}
        return data

    @model_validator(mode="after")
    def _check_source(self) -> IngestSpec:
        if self.source != "synthetic" and not self.root:
            raise ValueError(f"source {self.source!r} needs `root` (the folder, glob or list of videos)")
        if self.scaling.num_workers != 0:
            raise ValueError("ingest runs in the driver: leave scaling.num_workers at 0 and set decode_workers")
        return self


SPEC = IngestSpec


def listing_of(spec: IngestSpec):
    """The SourceListing the spec describes."""
    from h2s_dist.data.ingest import build_listing

    return build_listing(spec.source, spec.root, spec.splits, spec.synthetic.model_dump())


def run(spec: IngestSpec, session, tracker, output_uri: str) -> dict[str, Any]:
    """Ingest; outputs {"dataset", "videos", "skipped", "shards", "manifest", "metrics"}."""
    from h2s_dist.data.ingest import ingest

    dataset_uri = spec.output or output_uri
    tracker.log_params(spec.model_dump(mode="json"))
    tracker.set_tags({"h2s.stage_kind": spec.kind})
    report = ingest(
        listing_of(spec), dataset_uri, encoding=spec.encoding, size=spec.size, min_frames=spec.min_frames,
        quality=spec.quality, shard_target_bytes=int(spec.shard_size_mb * 2**20), num_workers=spec.decode_workers,
        resume=True, progress=sys.stderr.isatty(),
    )
    metrics = {
        "ingest/videos": float(report.num_ok),
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
