"""Data benchmarks: how the clip encodings compare (stored bytes, decode speed).

    .venv/bin/python bench/data.py --quick              # a few generated videos, ~1 min
    .venv/bin/python bench/data.py --videos '/data/UCF-101/*/*.avi' --max-videos 20

Part "encoding": for each source video, decode + resize to 340x256 (as ingest does),
store it with every encoding of h2s_dist.data.codec, and measure
  - stored bytes / source file bytes,
  - encode seconds per video (ingest cost),
  - clips decoded per second on one core: an 11-frame window at a uniformly random
    start, through codec.decode_frames (the readers' path), one decode thread.
Without --videos the sources are generated stand-ins for UCF101 clips (320x240, 25 fps,
mpeg4-part-2 in avi like UCF101's xvid, a textured panning scene with moving textured
objects and sensor noise); real clips compress differently, so rerun on real ones.

Results go to bench/results/data.json, one key per part. To add a part (e.g. streaming
throughput of the readers), write `def bench_<name>(args) -> dict` and add it to PARTS.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
from h2s_dist.data import codec  # noqa: E402
from h2s_dist.data.video import encode_video, read_video  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "data.json"
CLIP_LEN = 11
SIZE = (340, 256)


# ----------------------------------------------------------------------------- sources


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A natural-looking colour texture: noise summed over octaves (roughly 1/f)."""
    img = np.zeros((height, width, 3), np.float32)
    for octave in range(1, 7):
        cells = 2**octave
        small = rng.normal(0, 1, (cells, max(2, cells * width // height), 3)).astype(np.float32)
        layer = np.stack(
            [np.asarray(Image.fromarray(small[..., c]).resize((width, height), Image.BICUBIC)) for c in range(3)], -1
        )
        img += layer / octave
    img = (img - img.min()) / (np.ptp(img) + 1e-6)
    return (img * 255).astype(np.uint8)


def stand_in_video(seed: int, num_frames: int, width: int = 320, height: int = 240) -> np.ndarray:
    """(T, H, W, 3) uint8: a panning textured scene, two moving textured boxes, noise."""
    rng = np.random.default_rng(seed)
    pan = rng.uniform(-1.5, 1.5, 2)
    margin = int(np.ceil(np.abs(pan).max() * num_frames)) + 2
    scene = _texture(rng, height + 2 * margin, width + 2 * margin)
    actors = [(_texture(rng, 64, 48), rng.uniform(0, [width - 48, height - 64]), rng.uniform(-3, 3, 2)) for _ in range(2)]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        x0, y0 = (margin + pan * t).astype(int)
        frame = scene[y0 : y0 + height, x0 : x0 + width].astype(np.int16)
        for patch, origin, velocity in actors:
            x, y = np.clip(origin + velocity * t, 0, [width - 48, height - 64]).astype(int)
            frame[y : y + 64, x : x + 48] = patch
        frame += rng.normal(0, 2.0, frame.shape).astype(np.int16)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def make_sources(folder: pathlib.Path, num_videos: int, num_frames: int) -> list[str]:
    paths = []
    for i in range(num_videos):
        path = folder / f"source_{i:02d}.avi"
        # qscale 6 gives ~0.5-1 Mbit/s here, UCF101's xvid clips average ~0.55 Mbit/s.
        path.write_bytes(encode_video(stand_in_video(i, num_frames), 25.0, codec="mpeg4", crf=6, container="avi"))
        paths.append(str(path))
    return paths


# ----------------------------------------------------------------------------- part: encoding


def _clips_per_s(sample: dict, num_frames: int, rng: np.random.Generator, min_seconds: float) -> float:
    count, t0 = 0, time.perf_counter()
    while True:
        start = int(rng.integers(0, num_frames - CLIP_LEN + 1))
        clip = codec.decode_frames(sample, start, CLIP_LEN)
        assert clip.shape == (CLIP_LEN, SIZE[1], SIZE[0], 3)
        count += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and count >= 5:
            return count / elapsed


def bench_encoding(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if args.videos:
            sources = sorted(glob.glob(args.videos, recursive=True))[: args.max_videos]
        else:
            sources = make_sources(pathlib.Path(tmp), args.max_videos, args.num_frames)
        if not sources:
            raise SystemExit(f"no videos match {args.videos!r}")
        rng = np.random.default_rng(0)
        per_encoding: dict[str, dict[str, list[float]]] = {
            enc: {"ratio": [], "encode_s": [], "clips_per_s": [], "stored_bytes": []} for enc in codec.ENCODINGS
        }
        source_bytes, source_kbps = [], []
        for path in sources:
            video = read_video(path, size=SIZE)
            frames, fps = video.frames, video.fps or 25.0
            size = os.path.getsize(path)
            source_bytes.append(size)
            source_kbps.append(size * 8 / 1000 / (len(frames) / fps))
            for enc, stats in per_encoding.items():
                t0 = time.perf_counter()
                ext, payload = codec.encode_frames(frames, fps, enc)
                stats["encode_s"].append(time.perf_counter() - t0)
                stats["stored_bytes"].append(len(payload))
                stats["ratio"].append(len(payload) / size)
                sample = {ext: payload, "json": json.dumps({"num_frames": len(frames)}).encode()}
                stats["clips_per_s"].append(_clips_per_s(sample, len(frames), rng, args.seconds_per_video))
    table = {
        enc: {
            "stored_over_source": float(np.sum(s["stored_bytes"]) / np.sum(source_bytes)),
            "stored_kB_per_video": float(np.mean(s["stored_bytes"]) / 1e3),
            "encode_s_per_video": float(np.mean(s["encode_s"])),
            "clips_per_s_per_core": float(np.mean(s["clips_per_s"])),
        }
        for enc, s in per_encoding.items()
    }
    return {
        "sources": "given" if args.videos else "generated stand-ins (320x240 mpeg4 avi, 25 fps)",
        "num_videos": len(source_bytes),
        "frames_per_video": args.num_frames if not args.videos else None,
        "source_kB_per_video": float(np.mean(source_bytes) / 1e3),
        "source_kbit_per_s": float(np.mean(source_kbps)),
        "size": list(SIZE),
        "clip_len_frames": CLIP_LEN,
        "decode_threads": codec.DECODE_THREADS,
        "quality": codec.DEFAULT_QUALITY,
        "encodings": table,
        # A shared machine slows both encodings alike; the ratio between them is what to read.
        "machine": {"cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)},
    }


def print_encoding(result: dict) -> None:
    print(f"\nencoding: {result['num_videos']} videos ({result['sources']}), "
          f"source {result['source_kB_per_video']:.0f} kB/video, {result['source_kbit_per_s']:.0f} kbit/s, "
          f"stored at {result['size'][0]}x{result['size'][1]}, load avg {result['machine']['load_avg_1min']} "
          f"on {result['machine']['cpus']} cpus")
    print(f"{'encoding':<10}{'stored/source':>15}{'kB/video':>10}{'encode s/video':>16}{'clips/s/core':>14}")
    for enc, row in result["encodings"].items():
        print(f"{enc:<10}{row['stored_over_source']:>15.2f}{row['stored_kB_per_video']:>10.0f}"
              f"{row['encode_s_per_video']:>16.2f}{row['clips_per_s_per_core']:>14.1f}")


PARTS = {"encoding": (bench_encoding, print_encoding)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 generated videos of 100 frames, 1 s per timing")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--videos", help="glob of real source videos (default: generated stand-ins)")
    parser.add_argument("--max-videos", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=180, help="frames per generated video (UCF101 mean ~186)")
    parser.add_argument("--seconds-per-video", type=float, default=3.0, help="timing budget per video and encoding")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_videos, args.num_frames, args.seconds_per_video = min(args.max_videos, 3), 100, 1.0
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in args.parts:
        run, show = PARTS[name]
        results[name] = run(args)
        show(results[name])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
