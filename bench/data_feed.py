"""Data feed benchmark: stored bytes and 11-frame training windows per CPU core, per clip
encoding, on the real clips of ../shared/data/videos (48 clips, CLIPS.csv).

    .venv/bin/python bench/data_feed.py               # all clips (~10 min on 2 busy cores)
    .venv/bin/python bench/data_feed.py --quick       # every 4th clip, fewer windows (~3 min)
    .venv/bin/python bench/data_feed.py --no-stream   # only part "windows"
    .venv/bin/python bench/data_feed.py --cluster     # only part "cluster" (~3 min)

Part "windows": each clip is decoded and resized to 340x256 as ingest does, stored with
every candidate encoding, and random 11-frame windows (uniform starts, as the train stream
draws them) are decoded and cropped as the train stream does (codec.decode_frames, then
transforms.multiscale_corner_crop to 224) on one thread (torch.set_num_threads(1), one
decoder thread). The same number of windows per clip, so the rate is the one a stream
drawing clips uniformly sees. Speeds are per CPU second of this process
(time.process_time), which a machine shared with other jobs inflates less than the wall
clock; both are reported, with the load average. Candidates:
  h264 g8 / g16   the "h264" encoding (h2s_dist.data.h264_stream): x264 fastdecode CRF 23,
                  no B-frames, a keyframe every 8 / 16 frames, frame index; decoded with a
                  bare H.264 decoder from the keyframe before the window
  h264 g8 mp4     the same x264 stream in an mp4, decoded through the demuxer with a seek
                  to the keyframe before the window (what the index saves)
  source+seek     the source file as it is (ratio 1 by definition) with a keyframe index;
                  seek to the keyframe before the window, decode at the source's size and
                  GOP, convert the 11 frames to 340x256 RGB
  jpeg q90        the JPEG frame stack; mp4 crf23: H.264 decoded from frame 0 (x264's GOP 250)
Part "stream": the real clips ingested (h2s_dist.data.ingest) as h264 and as jpeg, then
read through the train stream (train_loader, num_workers=0, batch 8: shard read, untar,
shuffle, decode, crop, flip, float normalisation) from file:// and from s3:// on a loopback
S3 server (rclone; its CPU time is added). Clips per CPU second of reader + server.

Part "cluster" (`--cluster`, run alone): the `ray_data` feed on a two-node Ray cluster on
this machine; adding a CPU-only decode node raises the clips/s a trainer-like consumer
receives (bench/feed_cluster.py says how). Merged into data_feed.json under "cluster".

Results: tables on stdout and bench/results/data_feed.json; docs/data.md has a run.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import glob
import io
import itertools
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

os.environ.setdefault("OMP_NUM_THREADS", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import ROOT, format_table, merge_results, write_results  # noqa: E402
from h2s_dist.data import codec, h264_stream, transforms  # noqa: E402
from h2s_dist.data.video import VideoDecodeError, read_video  # noqa: E402

VIDEOS = ROOT.parent / "shared" / "data" / "videos"
SIZE = (340, 256)  # (width, height): what ingest stores
CLIP_LEN, CROP = 11, 224

Decoder = Callable[[int], np.ndarray]  # window start -> (11, 256, 340, 3) uint8


@dataclass
class Totals:
    """One candidate summed over the clips."""

    stored_bytes: int = 0
    source_bytes: int = 0
    frames: int = 0
    encode_cpu_s: float = 0.0
    windows: int = 0
    decode_cpu_s: float = 0.0
    crop_cpu_s: float = 0.0
    wall_s: float = 0.0
    per_clip: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        per_window = (self.decode_cpu_s + self.crop_cpu_s) / self.windows
        return {
            "stored_over_source": round(self.stored_bytes / self.source_bytes, 3),
            "stored_mb": round(self.stored_bytes / 1e6, 2), "source_mb": round(self.source_bytes / 1e6, 2),
            "windows": self.windows,
            "windows_per_cpu_s": round(1 / per_window, 1),
            "windows_per_wall_s": round(self.windows / self.wall_s, 1),
            "decode_ms": round(1e3 * self.decode_cpu_s / self.windows, 2),
            "crop_ms": round(1e3 * self.crop_cpu_s / self.windows, 2),
            "cores_per_1000_clips_s": round(1000 * per_window, 1),
            "encode_frames_per_cpu_s": round(self.frames / self.encode_cpu_s, 1) if self.encode_cpu_s else None,
        }


# ----------------------------------------------------------------------------- candidates


def _codec_sample(frames: np.ndarray, fps: float, encoding: str) -> tuple[int, Decoder]:
    ext, payload = codec.encode_frames(frames, fps, encoding)
    sample = {ext: payload, "json": f'{{"num_frames": {len(frames)}}}'.encode()}
    return len(payload), lambda start: codec.decode_frames(sample, start, CLIP_LEN)


def _h264_g16(frames: np.ndarray, fps: float) -> tuple[int, Decoder]:
    payload = h264_stream.encode_h264_stream(frames, fps, gop_frames=16)
    return len(payload), lambda start: codec.decode_frames({"h264s": payload}, start, CLIP_LEN)


def _h264_mp4_seek(frames: np.ndarray, fps: float, gop: int = h264_stream.DEFAULT_GOP_FRAMES) -> tuple[int, Decoder]:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "23", "preset": h264_stream.DEFAULT_PRESET, "tune": "fastdecode",
                          "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    data = buf.getvalue()
    pts = _packet_pts(data)
    return len(data), lambda start: _seek_window(data, pts, (start // gop) * gop, start, SIZE)


def _packet_pts(data: bytes) -> list[int]:
    """Display-order pts of every frame (a keyframe index needs only these and the flags)."""
    with av.open(io.BytesIO(data)) as container:
        return sorted(p.pts for p in container.demux(video=0) if p.size)


def _keyframes(data: bytes) -> tuple[list[int], list[int]]:
    """(sorted pts of all frames, display indices of the keyframes) from one demux pass."""
    with av.open(io.BytesIO(data)) as container:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size and p.pts is not None]
    order = sorted(pts for pts, _ in packets)
    rank = {pts: i for i, pts in enumerate(order)}
    return order, sorted(rank[pts] for pts, key in packets if key)


def _source_seek(path: str) -> tuple[int, Decoder, int]:
    data = pathlib.Path(path).read_bytes()
    pts, keys = _keyframes(data)

    def decode(start: int) -> np.ndarray:
        key = keys[bisect.bisect_right(keys, start) - 1]
        return _seek_window(data, pts, key, start, SIZE)

    return len(data), decode, len(pts)


def _seek_window(data: bytes, pts: list[int], key: int, start: int, size: tuple[int, int]) -> np.ndarray:
    """Seek to frame `key` (a keyframe), decode, count frames from there in display order,
    return the window [start, start + 11) converted to RGB at `size`."""
    out = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        container.seek(pts[key], stream=stream, backward=True, any_frame=False)
        for index, frame in enumerate(container.decode(stream), start=key):
            if index >= start:
                out.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="BILINEAR"))
            if len(out) == CLIP_LEN:
                break
    if len(out) < CLIP_LEN:
        raise RuntimeError(f"seek window at {start} gave {len(out)} frames")
    return np.stack(out)


CANDIDATES: dict[str, Callable[[np.ndarray, float], tuple[int, Decoder]]] = {
    "h264 g8 (default)": lambda f, fps: _codec_sample(f, fps, "h264"),
    "h264 g16": _h264_g16,
    "h264 g8 mp4+seek": _h264_mp4_seek,
    "jpeg q90": lambda f, fps: _codec_sample(f, fps, "jpeg"),
    "mp4 crf23 (from frame 0)": lambda f, fps: _codec_sample(f, fps, "mp4"),
}
SOURCE = "source+seek"


# ----------------------------------------------------------------------------- part "windows"


def _time_windows(decode: Decoder, num_frames: int, num_windows: int, rng: np.random.Generator,
                  totals: Totals) -> float:
    crop_rng = np.random.default_rng(1)
    transforms.multiscale_corner_crop(decode(0), CROP, crop_rng)  # warm-up (first-call costs)
    decode_s = crop_s = 0.0
    wall = time.perf_counter()
    for _ in range(num_windows):
        start = transforms.random_window_start(num_frames, CLIP_LEN, rng)
        t0 = time.process_time()
        frames = decode(start)
        t1 = time.process_time()
        transforms.multiscale_corner_crop(frames, CROP, crop_rng)
        decode_s += t1 - t0
        crop_s += time.process_time() - t1
    totals.wall_s += time.perf_counter() - wall
    totals.windows += num_windows
    totals.decode_cpu_s += decode_s
    totals.crop_cpu_s += crop_s
    return (decode_s + crop_s) / num_windows


def bench_windows(paths: list[str], windows_per_clip: int, skipped: dict[str, str]) -> dict[str, Totals]:
    """Part "windows"; clips that ingest would skip (read_video refuses them) go to `skipped`."""
    totals = {name: Totals() for name in [*CANDIDATES, SOURCE]}
    for i, path in enumerate(paths):
        source_bytes = os.path.getsize(path)
        try:
            decoded = read_video(path, size=SIZE, threads=1)
        except VideoDecodeError as err:
            skipped[os.path.basename(path)] = err.reason
            print(f"[{i + 1}/{len(paths)}] {os.path.basename(path)}: skipped as ingest would: {err.reason}")
            continue
        frames, fps = decoded.frames, decoded.fps or 25.0
        rng_seed = [i, 7]
        line = []
        for name, build in CANDIDATES.items():
            t0 = time.process_time()
            stored, decode = build(frames, fps)
            encode_s = time.process_time() - t0
            tot = totals[name]
            tot.stored_bytes += stored
            tot.source_bytes += source_bytes
            tot.frames += len(frames)
            tot.encode_cpu_s += encode_s
            # mp4 from frame 0 costs ~5x more per window: half the windows keep the run short
            count = windows_per_clip // 2 if name.startswith("mp4") else windows_per_clip
            per = _time_windows(decode, len(frames), count, np.random.default_rng(rng_seed), tot)
            tot.per_clip.append({"clip": os.path.basename(path), "ratio": round(stored / source_bytes, 3),
                                 "window_ms": round(1e3 * per, 2)})
            line.append(f"{name.split(' (')[0]} {stored / source_bytes:.2f}x {1e3 * per:.1f}ms")
        # The source path decodes at the source's size and GOP (up to 250 frames of 1280x720): far fewer windows.
        stored, decode, num_packets = _source_seek(path)
        num_frames = min(num_packets, len(frames))  # some avi headers count one frame more than decodes
        tot = totals[SOURCE]
        tot.stored_bytes += stored
        tot.source_bytes += source_bytes
        per = _time_windows(decode, num_frames, max(2, windows_per_clip // 6), np.random.default_rng(rng_seed), tot)
        tot.per_clip.append({"clip": os.path.basename(path), "ratio": 1.0, "window_ms": round(1e3 * per, 2)})
        line.append(f"source {1e3 * per:.1f}ms")
        print(f"[{i + 1}/{len(paths)}] {os.path.basename(path)[:36]:36s} " + " | ".join(line), flush=True)
    return totals


# ----------------------------------------------------------------------------- part "stream"


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of process `pid` in seconds (/proc/<pid>/stat)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stream_rate(uri: str, batches: int, server_pid: int | None) -> dict:
    from h2s_dist.data.shards import TrainStreamConfig, train_loader

    config = TrainStreamConfig(uri, batch_size=8, split=None, subset=None, labeled=False,
                               epoch_length_samples=(batches + 1) * 8, shuffle_buffer=8)
    loader = train_loader(config, rank=0, world_size=1)
    next(loader)  # warm-up: first shard open, shuffle buffer fill
    cpu0, wall0 = time.process_time(), time.perf_counter()
    server0 = _proc_cpu_s(server_pid) if server_pid else 0.0
    clips = sum(x.shape[0] for x, _ in itertools.islice(loader, batches))
    cpu = time.process_time() - cpu0 + ((_proc_cpu_s(server_pid) - server0) if server_pid else 0.0)
    wall = time.perf_counter() - wall0
    return {"clips": clips, "clips_per_cpu_s": round(clips / cpu, 1), "clips_per_wall_s": round(clips / wall, 1),
            "cores_per_1000_clips_s": round(1000 * cpu / clips, 1)}


def bench_stream(paths: list[str], batches: int, tmp: str) -> list[dict]:
    from bench.data_stream import copy_dataset
    from h2s_dist.data.ingest import ingest
    from h2s_dist.data.s3server import LocalS3Server
    from h2s_dist.data.sources import unlabeled_entries

    listing = pathlib.Path(tmp, "videos.txt")
    listing.write_text("\n".join(paths) + "\n")
    rows = []
    with LocalS3Server(os.path.join(tmp, "s3")) as server, _environ(server.env()):
        bucket = server.create_bucket("bench")
        for encoding in ("h264", "jpeg"):
            local = os.path.join(tmp, f"ds-{encoding}")
            ingest(unlabeled_entries(str(listing)), local, encoding=encoding, size=SIZE, num_tasks=0,
                   progress=False, shard_target_bytes=8 * 2**20)
            remote = copy_dataset(local, f"{bucket}/ds-{encoding}")
            for where, uri, pid in (("file://", "file://" + local, None), ("s3://", remote, server._proc.pid)):
                r = {"encoding": encoding, "from": where, **_stream_rate(uri, batches, pid)}
                rows.append(r)
                print(f"stream {encoding:5s} {where:8s} {r['clips_per_cpu_s']:6.1f} clips/cpu-s "
                      f"{r['clips_per_wall_s']:6.1f} clips/s wall", flush=True)
    return rows


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default=str(VIDEOS), help="folder of real clips (default ../shared/data/videos)")
    parser.add_argument("--quick", action="store_true", help="every 4th clip, 8 windows per clip, 10 stream batches")
    parser.add_argument("--windows-per-clip", type=int, default=None, help="default 24 (--quick: 8)")
    parser.add_argument("--stream-batches", type=int, default=None, help="default 30 (--quick: 10)")
    parser.add_argument("--no-stream", action="store_true", help="skip part 'stream' (ingest + train_loader)")
    parser.add_argument("--cluster", action="store_true", help="only part 'cluster' (two-node Ray, the ray_data feed)")
    parser.add_argument("--clips", type=int, default=12, help="--cluster: real clips ingested (every k-th, default 12)")
    parser.add_argument("--measure-s", type=float, default=30.0, help="--cluster: seconds counted per row")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="--cluster: seconds pulled before counting")
    parser.add_argument("--work-dir", default=None, help="--cluster: keep the ingested dataset here (reused)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted(p for p in glob.glob(os.path.join(args.videos, "*")) if p.lower().endswith((".mp4", ".avi")))
    if not paths:
        raise SystemExit(f"no .mp4/.avi clips in {args.videos}")
    if args.cluster:
        _main_cluster(args, paths)
        return
    if args.quick:
        paths = paths[::4]
    windows = args.windows_per_clip or (8 if args.quick else 24)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    skipped: dict[str, str] = {}
    totals = bench_windows(paths, windows, skipped)
    rows = {name: t.row() for name, t in totals.items()}
    header = ["encoding", "stored/source", "windows/s/core", "decode ms", "crop ms", "cores per 1000 clips/s",
              "wall windows/s", "encode frames/s/core"]
    print(format_table(header, [[n, r["stored_over_source"], r["windows_per_cpu_s"], r["decode_ms"], r["crop_ms"],
                                 r["cores_per_1000_clips_s"], r["windows_per_wall_s"], r["encode_frames_per_cpu_s"]]
                                for n, r in rows.items()]))
    stream: list[dict] = []
    if not args.no_stream:
        with tempfile.TemporaryDirectory() as tmp:
            stream = bench_stream(paths, args.stream_batches or (10 if args.quick else 30), tmp)
        print(format_table(["encoding", "from", "clips/s/core", "cores per 1000 clips/s", "wall clips/s"],
                           [[r["encoding"], r["from"], r["clips_per_cpu_s"], r["cores_per_1000_clips_s"],
                             r["clips_per_wall_s"]] for r in stream]))
    load_after = os.getloadavg()
    if skipped:
        print(f"skipped {len(skipped)} clips (as ingest does): {skipped}")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} cores; "
          f"{time.perf_counter() - t0:.0f} s")
    path = write_results("data_feed", {
        "clips": [os.path.basename(p) for p in paths], "skipped": skipped, "windows_per_clip": windows, "size": SIZE,
        "clip_len_frames": CLIP_LEN, "crop_size": CROP, "windows": rows,
        "per_clip": {name: t.per_clip for name, t in totals.items()}, "stream": stream,
        "load_avg_before": load_before, "load_avg_after": load_after,
    })
    print(f"wrote {path}")


def _main_cluster(args: argparse.Namespace, paths: list[str]) -> None:
    from bench.feed_cluster import bench_cluster

    chosen = paths[:: max(1, len(paths) // args.clips)][: args.clips]
    result = bench_cluster(chosen, SIZE, args.warmup_s, args.measure_s, args.work_dir)
    print(format_table(["decode on", "decode slots", "clips/s to the trainer", "load before", "load after"],
                       [[r["decode_on"], r["decode_slots"], r["clips_per_s"], r["load_avg_1min_before"],
                         r["load_avg_1min_after"]] for r in result["rows"]]))
    print(result["note"])
    print(f"wrote {merge_results('data_feed', 'cluster', result)}")


if __name__ == "__main__":
    main()
