"""Command line of the ingest: `h2s ingest ...` and `python -m h2s_dist.data.ingest_cli ...`.

    h2s ingest ucf101 /data/UCF-101 --splits /data/ucfTrainTestlist --output s3://bucket/ucf101
    python -m h2s_dist.data.ingest_cli synthetic --output /tmp/synth --num-videos 64

Arguments -> h2s_dist.data.ingest.build_listing + ingest(...) -> the report's summary on
stdout. The work itself (planning, encoding, resume) is h2s_dist.data.ingest's.

Building the parser imports nothing heavy (`h2s --help` builds it whole): the ingest itself,
with numpy, PyAV and pyarrow, is imported by the handler that runs it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from h2s_dist.data.ingest_defaults import (
    DEFAULT_ENCODING,
    DEFAULT_SEGMENT_FRAMES,
    DEFAULT_SEGMENT_OVERLAP_FRAMES,
    DEFAULT_SHARD_TARGET_BYTES,
    ENCODINGS,
)

if TYPE_CHECKING:
    from h2s_dist.data.sources import SourceListing

# The first line of h2s_dist.data.ingest's docstring (a test keeps them equal).
_DESCRIPTION = "Ingest: video corpora -> WebDataset shards + Parquet manifest at a URI (path or s3://)."
_SYNTHETIC_FIELDS = ("num_videos", "num_frames", "height", "width", "seed", "shared_scenes", "classes")
_EXAMPLES = """examples:
  h2s ingest ucf101 /data/UCF-101 --splits /data/ucfTrainTestlist --output s3://bucket/ucf101
  h2s ingest hmdb51 /data/hmdb51 --splits /data/testTrainMulti_7030_splits --output /data/h2s/hmdb51
  h2s ingest videos '/data/clips/**/*.mp4' --output /data/h2s/unlabeled --encoding mp4
  h2s ingest videos 's3://bucket/corpus/**/*.mp4' --output s3://bucket/h2s/corpus --address auto
  h2s ingest videos list.txt --output /data/h2s/unlabeled        (one path per line)
  h2s ingest synthetic --output /tmp/h2s/synth --num-videos 64 --num-frames 32
  h2s ingest synthetic --output /tmp/h2s/scenes --classes scene_x_motion --shared-scenes

Shards are Ray tasks of one CPU over every CPU of the cluster (--address or $RAY_ADDRESS,
else a local Ray); --num-tasks 0 works in this process without Ray. On a cluster each task
writes its shards from its own node: --output must be s3://, or a path every node mounts
at the same place, declared with --output-shared.
A rerun with the same arguments resumes: finished shards are kept, the rest is written.
"""
_FIX_OUTPUT = ("write to an object store every node reaches (--output s3://bucket/prefix), or, if that path is on "
               "a filesystem every node mounts at the same place (NFS), say so with --output-shared")


def _parse_segment(text: str) -> int | str:
    if text == "whole":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"segment must be a number of frames or 'whole', got {text!r}")
    return int(text)


def _parse_size(text: str) -> tuple[int, int] | str:
    if text == "native":
        return text
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT (e.g. 340x256) or 'native', got {text!r}")
    return int(match[1]), int(match[2])


def add_ingest_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `ingest {videos,ucf101,hmdb51,synthetic}` to a CLI; handler in args.func."""
    parser = subparsers.add_parser(
        "ingest", help="encode a video corpus into WebDataset shards + a Parquet manifest",
        description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _fill_ingest_parser(parser)
    return parser


def _fill_ingest_parser(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", required=True, metavar="{videos,ucf101,hmdb51,synthetic}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", required=True, help="dataset URI to write: a path, file:// or s3://bucket/prefix "
                        "(on a Ray cluster: s3://, or a shared filesystem and --output-shared)")
    common.add_argument("--output-shared", action="store_true",
                        help="--output is a path on a filesystem every Ray node mounts at the same place (NFS): "
                             "allow it on a cluster, where each task writes its shards from its own node")
    common.add_argument("--encoding", choices=ENCODINGS, default=DEFAULT_ENCODING,
                        help="h264: H.264, keyframe every 8 frames + frame index (default); "
                        "jpeg: JPEG frame stack, several times larger; mp4: H.264 decoded from frame 0")
    common.add_argument("--quality", type=int, help="x264 CRF for h264/mp4 (default 23) or JPEG quality (default 90)")
    common.add_argument("--size", type=_parse_size,
                        help="WIDTHxHEIGHT frames are resized to, or 'native' (default 340x256; synthetic: native)")
    common.add_argument("--min-frames", type=int, default=11, help="skip shorter videos (default 11)")
    common.add_argument("--num-tasks", type=int, default=None,
                        help="shards in flight as Ray tasks of one CPU (default: twice the cluster's CPUs; "
                             "0 = one after another in this process, without Ray)")
    common.add_argument("--address", help="Ray cluster to run on (default $RAY_ADDRESS, else a local Ray)")
    common.add_argument("--segment-frames", type=_parse_segment,
                        help="a longer video becomes several samples of this many frames, or 'whole' "
                             f"(default {DEFAULT_SEGMENT_FRAMES.get('videos')} for videos, whole for the others); "
                             "a test video of any split stays whole")
    common.add_argument("--segment-overlap-frames", type=int, default=DEFAULT_SEGMENT_OVERLAP_FRAMES,
                        help="frames consecutive segments share, so training windows of up to this + 1 frames "
                             "are never lost at a cut (default %(default)s: the paper's 11-frame clips)")
    common.add_argument("--shard-size-mb", type=float, default=DEFAULT_SHARD_TARGET_BYTES / 2**20,
                        help="target shard size in MiB (default %(default)g)")
    common.add_argument("--no-resume", action="store_true", help="start over, deleting shards of an earlier run")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, root_help in (
        ("ucf101", "UCF101 root: ROOT/ClassName/v_ClassName_gXX_cYY.avi"),
        ("hmdb51", "HMDB51 root: ROOT/class_name/*.avi"),
    ):
        sub = sources.add_parser(name, parents=[common], help=f"{name.upper()} with its split lists",
                                 epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("root", help=root_help)
        sub.add_argument("--splits", help="folder of the official split lists (without: no splits, classes from folders)")
    sub = sources.add_parser("videos", parents=[common], help="any videos, unlabeled",
                             epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("root", help="a folder (searched recursively), a glob ('**' allowed) or a text file of paths")
    sub = sources.add_parser("synthetic", parents=[common], help="the synthetic motion dataset, rendered in memory",
                             epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--num-videos", type=int, default=64, help="videos, label = index %% 9 (default 64)")
    sub.add_argument("--num-frames", type=int, default=32, help="frames per video (default 32)")
    sub.add_argument("--height", type=int, default=128, help="frame height, even (default 128)")
    sub.add_argument("--width", type=int, default=160, help="frame width, even (default 160)")
    sub.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    sub.add_argument("--shared-scenes", action="store_true",
                     help="the videos of a round (one per class) that may look alike film one scene, so "
                          "appearance tells no motion even about training videos (default: a scene per video)")
    sub.add_argument("--classes", choices=("motion", "scene_x_motion"), default="motion",
                     help="motion: 9 camera motions on look-alike scenes (default); scene_x_motion: 3 scene "
                          "types x 3 motions, <scene>_<motion>: a frame tells the scene, the flow the motion")
    parser.set_defaults(func=run_ingest_command)


def listing_from_args(args: argparse.Namespace) -> SourceListing:
    """The SourceListing the parsed `h2s ingest` arguments describe."""
    from h2s_dist.data import ingest as ingest_lib

    synthetic = {name: getattr(args, name) for name in _SYNTHETIC_FIELDS} if args.source == "synthetic" else None
    return ingest_lib.build_listing(args.source, getattr(args, "root", None), getattr(args, "splits", None), synthetic)


def check_output_reachable(args: argparse.Namespace) -> None:
    """Refuse (ValueError naming --output and the fix) a node-local --output when the shards'
    Ray tasks may run on other nodes: each would write its shards to its own node's disk. The
    rule is the job runner's (pipeline.layout); --num-tasks 0 writes from this process only."""
    from h2s_dist.pipeline.layout import check_output

    if args.num_tasks == 0:
        return
    check_output(args.output, ray_address=args.address, shared=args.output_shared, field="--output", fix=_FIX_OUTPUT)


def run_ingest_command(args: argparse.Namespace) -> int:
    """Handler of `h2s ingest ...`: runs the ingest and prints its summary; returns the exit code."""
    check_output_reachable(args)  # before any listing, planning or Ray
    from h2s_dist.data import ingest as ingest_lib

    if args.size is None:  # not given: the paper's 340x256, but synthetic videos keep their size
        size = None if args.source == "synthetic" else ingest_lib.DEFAULT_SIZE
    else:
        size = None if args.size == "native" else args.size
    if args.segment_frames is None:
        segment_frames = DEFAULT_SEGMENT_FRAMES.get(args.source)
    else:
        segment_frames = None if args.segment_frames == "whole" else args.segment_frames
    report = ingest_lib.ingest(
        listing_from_args(args), args.output, encoding=args.encoding, size=size, min_frames=args.min_frames,
        quality=args.quality, shard_target_bytes=int(args.shard_size_mb * 2**20), segment_frames=segment_frames,
        segment_overlap_frames=args.segment_overlap_frames, num_tasks=args.num_tasks, address=args.address,
        resume=not args.no_resume, progress=not args.no_progress,
    )
    print(report.summary())
    return 0


def ingest_cli(argv: Sequence[str] | None = None) -> int:
    """`python -m h2s_dist.data.ingest_cli ...`, the same arguments as `h2s ingest ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m h2s_dist.data.ingest_cli", description=_DESCRIPTION, epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _fill_ingest_parser(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    raise SystemExit(ingest_cli())
