"""Storage: bytes of the source videos, of the ingested shards and of the TV-L1 flow cache.

The same corpus three ways: synthetic videos written as .avi (x264, as
`h2s_dist.data.synthetic.write_dataset` writes them) at 340x256, the frame size ingest
stores for UCF101; those files ingested into WebDataset shards (`h2s_dist.data.ingest`,
jpeg and mp4 encodings); and the TV-L1 flow cache the two-stage baseline needs (the
`tvl1_flows` stage, in this process: 8-bit u/v JPEG images, 2 per frame pair). The hidden
two-stream network needs no flow cache at all: that column is the storage it saves.

The UCF101 row is an ESTIMATE: bytes per frame measured here x 13,320 videos x ~7 s x
25 fps (~2.33 M frames). Synthetic frames (smooth textures, camera motion) compress
differently from real footage, so read the per-frame figures as an order of magnitude
and rerun on real clips for real numbers.

    .venv/bin/python bench/storage.py --quick        # ~2-3 min on 2 cores (TV-L1 at 340x256 dominates)
    .venv/bin/python bench/storage.py --num-videos 18 --num-frames 100

Writes bench/results/storage.json.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import format_table, write_results  # noqa: E402

UCF101 = {"videos": 13_320, "seconds_per_video": 7.0, "fps": 25.0, "size": (340, 256)}
SIZE = (340, 256)  # (width, height), what ingest stores for UCF101


def folder_bytes(path: str | os.PathLike, pattern: str = "*") -> int:
    """Total size of the files matching `pattern` under `path` (recursive)."""
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob(pattern) if p.is_file())


def ucf101_frames() -> float:
    return UCF101["videos"] * UCF101["seconds_per_video"] * UCF101["fps"]


def extrapolate(bytes_per_frame: float) -> float:
    """Estimated bytes for UCF101 (2.33 M frames at 340x256) from bytes per frame."""
    return bytes_per_frame * ucf101_frames()


def build_corpus(tmp: pathlib.Path, num_videos: int, num_frames: int) -> tuple[pathlib.Path, int]:
    from h2s_dist.data.synthetic import SyntheticMotionConfig, write_dataset

    root = tmp / "videos"
    config = SyntheticMotionConfig(num_videos=num_videos, num_frames=num_frames, height=SIZE[1], width=SIZE[0],
                                   num_sprites=(0, 2))
    write_dataset(root, config, ext=".avi", layout="ucf101")
    return root, folder_bytes(root, "*.avi")


def ingest_corpus(root: pathlib.Path, out: pathlib.Path, encoding: str) -> int:
    from h2s_dist.data.ingest import ingest
    from h2s_dist.data.sources import ucf101_entries

    ingest(ucf101_entries(root, None), str(out), encoding=encoding, size=SIZE, num_tasks=0, progress=False)
    return folder_bytes(out / "shards")


def tvl1_cache(dataset: pathlib.Path, out: pathlib.Path, fast: bool) -> dict:
    """Run the tvl1_flows stage in this process over every video; its outputs (sizes, timing)."""
    from h2s_dist.train.launch import launch
    from h2s_dist.specs.driver import TVL1FlowsSpec

    tvl1 = {"num_scales": 3, "num_warps": 3} if fast else {}
    spec = TVL1FlowsSpec(dataset=str(dataset), subset=None, num_tasks=0, videos_per_shard=64, tvl1=tvl1)
    outputs = launch("tvl1_flows", spec, str(out))
    outputs["flow_folder_bytes"] = folder_bytes(pathlib.Path(outputs["flows"]))
    return outputs


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 videos of 24 frames, coarser TV-L1 (3 scales, 3 warps)")
    p.add_argument("--num-videos", type=int, default=None, help="default 18 (--quick 3)")
    p.add_argument("--num-frames", type=int, default=None, help="default 100 (--quick 24)")
    p.add_argument("--cv-threads", type=int, default=None, help="OpenCV threads (default: all cores)")
    args = p.parse_args(argv)
    args.num_videos = args.num_videos or (3 if args.quick else 18)
    args.num_frames = args.num_frames or (24 if args.quick else 100)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    import cv2

    cv2.setNumThreads(args.cv_threads or os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        root, source_bytes = build_corpus(tmp, args.num_videos, args.num_frames)
        print(f"{args.num_videos} videos x {args.num_frames} frames at {SIZE[0]}x{SIZE[1]}: "
              f"{source_bytes / 1e6:.2f} MB of .avi", flush=True)
        shards = {enc: ingest_corpus(root, tmp / f"ds-{enc}", enc) for enc in ("jpeg", "mp4")}
        print("shards: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in shards.items()), flush=True)
        flows = tvl1_cache(tmp / "ds-jpeg", tmp / "tvl1", args.quick)
        print(f"TV-L1 cache: {flows['flow_folder_bytes'] / 1e6:.2f} MB ({flows['num_pairs']} pairs, "
              f"{flows['tvl1_ms_per_pair']:.0f} ms/pair)", flush=True)

    frames = args.num_videos * args.num_frames
    pairs = flows["num_pairs"]
    items = {
        "source_avi": (source_bytes, frames),
        "shards_jpeg": (shards["jpeg"], frames),
        "shards_mp4": (shards["mp4"], frames),
        "tvl1_flow_cache": (flows["flow_folder_bytes"], pairs),
    }
    table = {}
    for name, (nbytes, count) in items.items():
        per = nbytes / count
        table[name] = {"bytes": nbytes, "bytes_per_frame": per, "ucf101_estimate_gb": extrapolate(per) / 1e9}
    # What each method must keep besides the source videos.
    needs = {"hidden_two_stream": table["shards_jpeg"]["ucf101_estimate_gb"],
             "tvl1_two_stage": table["shards_jpeg"]["ucf101_estimate_gb"] + table["tvl1_flow_cache"]["ucf101_estimate_gb"]}
    print()
    print(format_table(["item", "bytes (this corpus)", "bytes/frame", "UCF101 estimate GB"],
                       [[k, v["bytes"], v["bytes_per_frame"], v["ucf101_estimate_gb"]] for k, v in table.items()], ".1f"))
    print(f"\nflow cache / jpeg shards: {table['tvl1_flow_cache']['bytes_per_frame'] / table['shards_jpeg']['bytes_per_frame']:.2f}"
          f"; training data kept (UCF101 estimate): hidden two-stream {needs['hidden_two_stream']:.1f} GB, "
          f"TV-L1 two-stage {needs['tvl1_two_stage']:.1f} GB")
    payload = {
        "storage": table, "training_data_gb_ucf101_estimate": needs,
        "corpus": {"videos": args.num_videos, "frames_per_video": args.num_frames, "size_wh": list(SIZE),
                   "source": "synthetic (h2s_dist.data.synthetic, 0-2 sprites), x264 .avi via write_dataset"},
        "tvl1": {"settings": "num_scales 3, num_warps 3" if args.quick else "OpenCV defaults",
                 "ms_per_pair": flows["tvl1_ms_per_pair"], "pairs": pairs},
        "ucf101_extrapolation": {**UCF101, "frames": ucf101_frames(), "label": "ESTIMATE from synthetic bytes/frame"},
    }
    path = write_results("storage", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
