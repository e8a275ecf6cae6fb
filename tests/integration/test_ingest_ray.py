"""`h2s ingest videos 's3://.../**/*.mp4'` on Ray tasks against the loopback S3 server: shards
written by several worker processes, a long video cut into segments the readers read back,
bad files reported, a killed ingest resumed without rewriting a finished shard, and a video
that kills its worker process skipped. One local Ray for the module (start-up ~10-20 s)."""

from __future__ import annotations

import json
import os
import time
import pathlib

import numpy as np
import pytest

from h2s_dist.data import codec, manifest, shard_io, sources, storage
from h2s_dist.data.ingest import ingest
from h2s_dist.data.ingest_cli import ingest_cli
from h2s_dist.data.skips import SkipRecorder
from h2s_dist.data.synthetic import SyntheticMotionConfig, make_video
from h2s_dist.data.video import encode_video, read_video

pytestmark = pytest.mark.integration

SMALL = (64, 48)
SEGMENT = 30
LONG_FRAMES = 70  # -> segments [0, 30), [20, 50), [40, 70): neighbours share the default 10 frames
SHORT = SyntheticMotionConfig(num_videos=8, num_frames=14, height=48, width=64, seed=5)
LONG = SyntheticMotionConfig(num_videos=1, num_frames=LONG_FRAMES, height=48, width=64, seed=6)


@pytest.fixture(scope="module")
def s3_ray(s3_server, tmp_path_factory):
    """The S3 server's settings in the environment, then a local Ray whose workers inherit them
    (4 CPUs declared, more than this machine's 2 cores, so that several worker processes run
    at once); yields an S3 prefix holding the corpus: 8 short videos, one long one, a
    truncated mp4 and a text file named .mp4."""
    import ray

    from tests.conftest_parts.storage import S3_TEST_BUCKET, _OUTER_AWS_VARS

    with pytest.MonkeyPatch.context() as env:
        for name in _OUTER_AWS_VARS:
            env.delenv(name, raising=False)
        for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            env.setenv(name, os.devnull)
        for name, value in s3_server.env().items():
            env.setenv(name, value)
        env.setenv("RAY_AUTH_MODE", "disabled")
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        prefix = f"s3://{S3_TEST_BUCKET}/ingest-ray"
        corpus = storage.join(prefix, "corpus")
        for i in range(SHORT.num_videos):
            storage.write_bytes(storage.join(corpus, f"short/clip_{i}.mp4"), encode_video(make_video(SHORT, i).frames, 25.0))
        long_video = encode_video(make_video(LONG, 0).frames, 25.0, crf=18)
        storage.write_bytes(storage.join(corpus, "long/a_long_one.mp4"), long_video)
        storage.write_bytes(storage.join(corpus, "bad/truncated.mp4"), long_video[: len(long_video) // 2])
        storage.write_bytes(storage.join(corpus, "bad/notes.mp4"), b"this is not a video\n")
        ray.init(num_cpus=4, include_dashboard=False)
        # Start the worker processes before the ingest: on a loaded machine Ray starts them
        # lazily and one fast worker can take every shard before a second one is up.
        warm = ray.remote(num_cpus=1)(lambda: (time.sleep(1.0), os.getpid())[1])
        assert len(set(ray.get([warm.remote() for _ in range(4)]))) > 1
        try:
            yield prefix
        finally:
            ray.shutdown()


def _cli(prefix: str, out: str, *extra: str) -> int:
    return ingest_cli(["videos", storage.join(prefix, "corpus/**/*.mp4"), "--output", out, "--size", "64x48",
                       "--segment-frames", str(SEGMENT), "--shard-size-mb", "0.004", "--no-progress", *extra])


def test_s3_glob_ingests_on_several_workers_cuts_long_videos_and_reports_bad_files(s3_ray, capsys):
    out = storage.join(s3_ray, "ds")
    assert _cli(s3_ray, out) == 0
    printed = capsys.readouterr().out
    assert "ingested 9 of 11 videos as 11 samples" in printed and "skipped 2" in printed

    report = json.loads(storage.read_bytes(storage.join(out, "ingest_report.json")))
    assert len(report["workers"]) > 1, (report["workers"], report["num_shards"])  # shards came from several processes
    assert report["num_shards"] > 2
    reasons = {pathlib.PurePosixPath(s["source"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"truncated.mp4", "notes.mp4"}
    assert reasons["truncated.mp4"].startswith("truncated") and reasons["notes.mp4"].startswith("not a video")

    rows = manifest.read_manifest(out).to_pylist()
    long_rows = sorted((r for r in rows if r["source_key"] == "a_long_one"), key=lambda r: r["start_frame"])
    assert [(r["key"], r["start_frame"], r["num_frames"]) for r in long_rows] == [
        ("a_long_one_f000000", 0, SEGMENT), ("a_long_one_f000020", 20, SEGMENT), ("a_long_one_f000040", 40, SEGMENT)]
    assert all(r["source"].startswith("s3://") for r in rows)
    assert all((r["source_key"], r["start_frame"]) == (r["key"], 0) for r in rows if r not in long_rows)

    # The shard reader gives each segment's frames: those of the source video from its start frame.
    source = read_video(storage.read_bytes(long_rows[0]["source"]), size=SMALL).frames
    shards = sorted({manifest.shard_uri(out, r["shard"]) for r in long_rows})
    recorder = SkipRecorder()
    for sample in shard_io.iter_samples(shards, {r["key"] for r in long_rows}, recorder, None):
        row = next(r for r in long_rows if r["key"] == sample["__key__"])
        frames = codec.decode_frames(sample)
        expected = source[row["start_frame"]: row["start_frame"] + row["num_frames"]]
        assert frames.shape == expected.shape
        assert np.abs(frames.astype(int) - expected).mean() < 4  # the default h264 at CRF 23
    assert not recorder.skipped

    # The training stream reads the unlabeled segments like any sample.
    from h2s_dist.data.shards import TrainStreamConfig, train_loader

    config = TrainStreamConfig(out, batch_size=4, split=None, subset=None, crop_size=32, labeled=False,
                               epoch_length_samples=4, shuffle_buffer=4)
    clips, labels = next(iter(train_loader(config, rank=0, world_size=1)))
    assert tuple(clips.shape) == (4, 11, 3, 32, 32) and labels.tolist() == [-1] * 4


class _Killed(RuntimeError):
    pass


def test_an_ingest_killed_after_two_shards_resumes_without_rewriting_finished_ones(s3_ray, s3_server):
    out = storage.join(s3_ray, "killed")
    listing = sources.unlabeled_entries(storage.join(s3_ray, "corpus/**/*.mp4"))
    kwargs = dict(size=SMALL, segment_frames=SEGMENT, shard_target_bytes=4_000, num_tasks=2, progress=False)
    seen: list[int] = []

    def kill_after_two(index: int) -> None:
        seen.append(index)
        if len(seen) == 2:
            raise _Killed  # the driver dies here; the tasks in flight are cancelled (killed)

    with pytest.raises(_Killed):
        ingest(listing, out, on_shard_done=kill_after_two, **kwargs)
    assert not storage.exists(storage.join(out, "manifest.parquet"))

    # Finished = a done record and its shard; the server's files tell whether one is rewritten.
    folder = pathlib.Path(s3_server.root_dir, out.removeprefix("s3://"))
    records = sorted(p.name for p in (folder / "_ingest").glob("shard-*.json"))
    finished = {r.replace(".json", ".tar"): (folder / "shards" / r.replace(".json", ".tar")).stat() for r in records}
    assert len(finished) >= 2 and {f"shard-{i:06d}.tar" for i in seen} <= set(finished)

    written: list[int] = []
    report = ingest(listing, out, on_shard_done=written.append, **kwargs)
    assert written and report.shards_reused == len(finished) and len(written) == report.num_shards - len(finished)
    assert not {f"shard-{i:06d}.tar" for i in written} & set(finished)
    for name, before in finished.items():
        after = (folder / "shards" / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    assert report.num_ok == 9 and report.num_samples == manifest.read_manifest(out).num_rows == 11


def _die() -> tuple:
    os._exit(3)  # a decoder crash, or the OOM killer: the worker process is gone


def test_a_video_that_kills_its_worker_is_skipped_and_the_rest_land(s3_ray, tmp_path):
    listing = sources.synthetic_entries(SyntheticMotionConfig(num_videos=10, num_frames=12, height=48, width=64))
    entries = list(listing.entries)
    victim = entries[4]
    entries[4] = sources.VideoEntry(victim.path, victim.key, victim.label, victim.class_name, victim.splits, _die)
    report = ingest(entries, str(tmp_path / "ds"), size=None, shard_target_bytes=600_000, num_tasks=2,
                    progress=False)
    assert [(s.key, s.reason.split(":")[0]) for s in report.skipped] == [(victim.key, "crashed")]
    keys = set(manifest.read_manifest(str(tmp_path / "ds")).column("key").to_pylist())
    assert keys == {e.key for e in entries} - {victim.key}
