"""Stage `tvl1_flows`: the first stage of a two-stage pipeline (precomputed flow).

Reads a frame dataset, computes quantised flow of every frame pair of every selected video,
Dual TV-L1 (h2s_dist.baseline.tvl1, the baseline) or a trained MotionNet's with `source:
motionnet` (h2s_dist.baseline.motionnet_flows, paper Table 2's "flows cached" row), and writes
a flow dataset (h2s_dist.data.flow_shards) to `output_uri/flows`. Not a training loop: `run`
ignores the session.

Work is cut into chunks: consecutive selected videos of one frame shard, at most
`videos_per_shard` each; chunk i becomes flow shard i (so flow shards stay pure per split-1
side, like the frame shards). Chunks run as Ray tasks (one CPU each, at most `num_tasks` in
flight; `num_tasks: 0` computes in this process), through h2s_dist.tasks as ingest's shards
do. A chunk is done when its shard and its record `flows/_flows/chunk-NNNNNN.json` exist; a
rerun skips done chunks, and a rerun with another plan (other videos, size, bound, quality,
TV-L1 settings) at the same URI is refused (h2s_dist.data.resumable, the mechanism ingest
resumes with too).

    outputs = launch("tvl1_flows", TVL1FlowsSpec(dataset="s3://b/ucf101", num_tasks=32), "s3://b/job/tvl1")
    outputs["flows"]      # the flow dataset URI, for train_temporal_flows and evaluate
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from typing import Any

from h2s_dist import progress
from h2s_dist.data import manifest, resumable, storage
from h2s_dist.data.flow_shards import FLOW_ENCODING, write_flow_info
from h2s_dist.data.resumable import UnitRecord
from h2s_dist.specs.driver import TVL1FlowsSpec
from h2s_dist.tasks import run_tasks

PLAN_VERSION = 1


# ----------------------------------------------------------------------------- plan


def selected_rows(dataset_uri: str, split: int | None, subset: str | None) -> list[dict[str, Any]]:
    """Frame-manifest rows to compute, manifest order; subset None = every video."""
    table = manifest.read_manifest(dataset_uri)
    rows = manifest.select(table, split if subset else None, subset).to_pylist()
    if not rows:
        raise ValueError(f"{dataset_uri}: no video in split={split} subset={subset!r}; check the manifest")
    return rows


def plan_chunks(rows: list[dict[str, Any]], videos_per_shard: int) -> list[list[dict[str, Any]]]:
    """Consecutive rows of one frame shard, at most `videos_per_shard` per chunk, order kept."""
    chunks: list[list[dict[str, Any]]] = []
    for row in rows:
        last = chunks[-1] if chunks else None
        if last and last[0]["shard"] == row["shard"] and len(last) < videos_per_shard:
            last.append(row)
        else:
            chunks.append([row])
    return chunks


def plan_fingerprint(spec: TVL1FlowsSpec, chunks: list[list[dict[str, Any]]]) -> str:
    """What decides the flow bytes: the videos (by content hash), chunking and every setting."""
    plan = {
        "version": PLAN_VERSION,
        "chunks": [[(r["key"], r["sha256"], r["num_frames"], posixpath.basename(r["shard"])) for r in chunk]
                   for chunk in chunks],
        "size": spec.size, "bound": spec.bound, "quality": spec.quality, "tvl1": spec.tvl1.model_dump(),
    }
    if spec.source != "tvl1":  # only then: TV-L1 caches written before `source` keep their fingerprint
        plan.update(source=spec.source, **flow_method(spec))
    # 16 hex digits, as flow caches written before resumable.py carry: they still resume.
    return resumable.plan_fingerprint(plan)[:16]


def flow_method(spec: TVL1FlowsSpec) -> dict[str, Any]:
    """The flow method's settings for a chunk job and flow_info.json: TV-L1's, or the MotionNet's."""
    if spec.source == "tvl1":
        return {"tvl1": spec.tvl1.model_dump()}
    return {"motionnet": spec.motionnet.model_dump(mode="json"), "motionnet_weights": spec.motionnet_weights,
            "motionnet_frames": spec.motionnet_frames}


def flow_dataset(flows_uri: str, fingerprint: str) -> resumable.ResumableDataset:
    """The flow dataset's plan and chunk records: _flows/plan.json, _flows/chunk-NNNNNN.json."""
    return resumable.ResumableDataset(flows_uri, fingerprint, state_dir="_flows", record_prefix="chunk",
                                      what="flows")


# ----------------------------------------------------------------------------- one chunk (a Ray task)


def compute_chunk(job: dict[str, Any]) -> UnitRecord:
    """Flows of one chunk -> its flow shard (written here) and its record (returned).

    job: {"frame_shard", "flow_shard", "rows", "size", "bound", "quality", "params", "num_threads",
    "source", "method"}. Record: rows = flow-manifest rows, skipped, extra = {"pairs", "tvl1_s"
    (seconds in the flow method, TV-L1 or MotionNet), "shard_bytes"}.
    A video that fails to decode is skipped and listed, never fatal."""
    from h2s_dist.data import codec, flow_shards, transforms
    from h2s_dist.data.shard_io import iter_samples
    from h2s_dist.data.skips import SkipRecorder

    compute = _flow_function(job)
    by_key = {r["key"]: r for r in job["rows"]}
    recorder, done, tvl1_s, pairs = SkipRecorder(), {}, 0.0, 0
    for sample in iter_samples([job["frame_shard"]], set(by_key), recorder, None):
        key = sample["__key__"]
        if key in done:
            continue
        try:
            frames = codec.decode_frames(sample)
            if job["size"]:
                frames = transforms.resize_frames(frames, (job["size"][1], job["size"][0]))
            started = time.perf_counter()
            flows = compute(frames)
            tvl1_s += time.perf_counter() - started
        except Exception as exn:  # one bad video is a listed skip, not a failed stage
            recorder.record(key, job["frame_shard"], exn)
            continue
        pairs += len(flows)
        payload = flow_shards.encode_flow_stack(flows, job["quality"])
        height, width = flows.shape[1:3]
        meta = flow_shards.flow_sample_meta(key, by_key[key], len(flows), width, height, job["bound"])
        row = {**by_key[key], "shard": manifest.relative_shard(job["flow_shard"]), "num_frames": len(frames), "width": width,
               "height": height, "stored_bytes": len(payload), "encoding": FLOW_ENCODING}
        done[key] = (payload, meta, row)
    for key in by_key:
        if key not in done and not any(s.key == key for s in recorder.skipped):
            recorder.record(key, job["frame_shard"], "sample not found in its shard")
    ordered = [done[k] for k in by_key if k in done]
    shard_bytes = flow_shards.write_flow_shard(job["flow_shard"], [(m["key"], p, m) for p, m, _ in ordered])
    return UnitRecord([r for _, _, r in ordered], recorder.skipped,
                      {"pairs": pairs, "tvl1_s": round(tvl1_s, 4), "shard_bytes": shard_bytes})


def _flow_function(job: dict[str, Any]) -> Callable:
    """frames (T, H, W, 3) uint8 -> quantised flows (T-1, H, W, 2), by the job's flow method."""
    if job.get("source", "tvl1") == "tvl1":
        from h2s_dist.baseline import tvl1

        if job["num_threads"] is not None:
            tvl1.set_num_threads(job["num_threads"])
        return lambda frames: tvl1.window_flows(frames, job["bound"], job["params"])
    import torch

    from h2s_dist.baseline.motionnet_flows import load_motionnet, video_flows

    if job["num_threads"] is not None:
        torch.set_num_threads(job["num_threads"])
    method = job["method"]
    model = load_motionnet(method["motionnet"], method["motionnet_weights"], method["motionnet_frames"])
    model.to("cuda" if job.get("use_cuda") else "cpu")
    return lambda frames: video_flows(model, frames, job["bound"], job["batch_windows"])


# ----------------------------------------------------------------------------- the stage


def run(spec: TVL1FlowsSpec, tracker, output_uri: str) -> dict[str, Any]:
    """Compute (or finish computing) the flow dataset; outputs {"flows": URI, "flow_bytes",
    "frame_bytes", "seconds", "pairs_per_s", ...}."""
    started = time.perf_counter()
    tracker.log_params(spec.model_dump(mode="json"))
    tracker.set_tags({"h2s.stage_kind": spec.kind})
    flows_uri = storage.join(output_uri, "flows")
    rows = selected_rows(spec.dataset, spec.split, spec.subset)
    chunks = plan_chunks(rows, spec.videos_per_shard)
    out = flow_dataset(flows_uri, plan_fingerprint(spec, chunks))
    out.open_plan(remedy="write to a new output URI or delete that one")

    records = out.done_records(len(chunks))
    jobs = [
        {"index": i, "rows": chunk, "flow_shard": out.unit_uri(i),
         "frame_shard": manifest.shard_uri(spec.dataset, chunk[0]["shard"]),
         "size": spec.size, "bound": spec.bound, "quality": spec.quality, "params": spec.tvl1.params(),
         "num_threads": 1 if spec.num_tasks else None, "source": spec.source, "method": flow_method(spec),
         "batch_windows": spec.motionnet_batch_windows, "use_cuda": spec.gpus_per_task > 0}
        for i, chunk in enumerate(chunks) if i not in records
    ]
    reused, computed_pairs = len(records), 0
    bar = progress.build("tvl1_flows", len(chunks), unit="chunk", initial=reused)

    def on_done(job: dict[str, Any], record: UnitRecord) -> None:
        nonlocal computed_pairs
        index = job["index"]
        records[index] = out.mark_done(index, record)
        computed_pairs += record.extra["pairs"]
        tracker.log_metrics({"flows/chunks_done": len(records), "flows/pairs_computed": computed_pairs},
                            step=len(records))
        bar.update(len(records), pairs=computed_pairs)

    run_tasks(compute_chunk, jobs, spec.num_tasks, on_done, name=lambda job: f"tvl1-chunk-{job['index']}",
              num_gpus=spec.gpus_per_task if spec.source == "motionnet" else 0.0)
    bar.close()
    seconds = time.perf_counter() - started
    outputs = _finish(spec, out, records, rows)
    outputs.update(seconds=round(seconds, 3), pairs_per_s=round(computed_pairs / seconds, 3) if computed_pairs else 0.0,
                   chunks_reused=reused, chunks_computed=len(jobs))
    tracker.log_metrics({f"flows/{k}": float(v) for k, v in outputs.items() if k != "flows"}, step=len(chunks))
    return outputs


def _finish(spec: TVL1FlowsSpec, out: resumable.ResumableDataset, records: dict[int, UnitRecord],
            frame_rows: list[dict]) -> dict:
    """Manifest, classes, flow_info and report of the finished flow dataset; the size outputs."""
    rows, skipped = resumable.gather(records)
    report = {"num_videos": len(rows), "num_skipped": len(skipped), "skipped": [s.to_dict() for s in skipped]}
    out.finish(rows, skipped, report, report_name="flows_report.json", classes=manifest.read_classes(spec.dataset),
               nothing_done="no video gave flows")
    flows_uri = out.output_uri
    write_flow_info(flows_uri, {"bound": spec.bound, "quality": spec.quality, "source_dataset": spec.dataset,
                                "size": spec.size, "source": spec.source, **flow_method(spec)})
    kept = {r["key"] for r in rows}
    pairs = sum(r.extra["pairs"] for r in records.values())
    tvl1_s = sum(r.extra["tvl1_s"] for r in records.values())
    return {
        "flows": flows_uri,
        "flow_bytes": sum(int(r["stored_bytes"]) for r in rows),
        "frame_bytes": sum(int(r["stored_bytes"]) for r in frame_rows if r["key"] in kept),
        "flow_shard_bytes": sum(int(r.extra["shard_bytes"]) for r in records.values()),
        "num_videos": len(rows),
        "num_skipped": len(skipped),
        "num_pairs": pairs,
        # ms per pair in the flow method (TV-L1 or MotionNet), for a two-stage pipeline's fps
        "flow_ms_per_pair": round(1000 * tvl1_s / pairs, 3) if pairs else 0.0,
        **({"tvl1_ms_per_pair": round(1000 * tvl1_s / pairs, 3) if pairs else 0.0} if spec.source == "tvl1" else {}),
    }
