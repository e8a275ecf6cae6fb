"""Flow quality: average end-point error (EPE, pixels) of MotionNet, TV-L1, Farneback and zero flow.

Datasets (readers in h2s_dist.data.flow_sets, shared with training-time validation):
  - `synthetic`: pairs of `h2s_dist.data.synthetic.make_video` (exact flow, `valid` mask:
    destination inside the frame and not occluded);
  - `flyingchairs`, `kitti`, `yosemite` (`--flow-dev DIR`, e.g. ../shared/data/flow_dev): 9
    FlyingChairs pairs (dense gt), one KITTI pair (sparse gt: the PNG's valid bit), Yosemite
    yos9 -> yos10 (without its sky, whose gt motion the black sky of these frames cannot show);
  - `middlebury` (`--middlebury ROOT`, the official layout):
    ROOT/other-data/NAME/frame10.png, frame11.png (or other-data-gray/) and
    ROOT/other-gt-flow/NAME/flow10.flo;
  - `sintel_clean` / `sintel_final` (`--sintel ROOT`, the MPI-Sintel training layout):
    ROOT/{clean,final}/SCENE/frame_XXXX.png and ROOT/flow/SCENE/frame_XXXX.flo (flow of
    frame XXXX -> XXXX+1).

EPE of a dataset = mean over its pairs of the pair's mean EPE over valid pixels (pixels
with unknown ground truth, |value| > 1e9 in the .flo, are excluded). All methods give
flow i: frame i -> i+1 with frame1(x) ~ frame2(x + flow(x)), u right, v down: OpenCV's
TV-L1 and Farneback `calc(prev, next)` and MotionNet (h2s_dist.warp.backward_warp) agree.

`--max-side N` (default 512 with --quick, else off) shrinks every pair whose longer side is
above N before any method runs (KITTI's 1242x375 -> 512x155): frames bilinear, ground truth
nearest neighbour with u, v multiplied by the resize factors. "epe" is then in *resized*
pixels, which is what the methods saw; "epe_original_px" divides both flows by the factors,
i.e. the same errors in the dataset's own pixels (printed as a second table when any pair
was resized). Resizing changes the task (smaller motions, less detail), so compare methods
within one run, not with published full-resolution figures.

MotionNet: `--motionnet URI` (a state dict, e.g. pretrain_motionnet's `motionnet` output)
with `--flavour` (paper, small, tiny) and `--num-frames`. A T-frame network is scored on the
flow of the pair inside a real T-frame window where the dataset has one (synthetic videos:
the pair is the middle of an 11-frame clip, so the network sees the motion it was trained
on); on a bare pair (flow dev, Middlebury, Sintel) it sees the pair padded to its window by
repeating the second frame (f1, f2, f2, ..., f2) and flow 0 is scored. `--num-frames 2`
scores a 2-frame network on the pair itself, the paper's Table 2 "MotionNet (2 frames)" row.
What the network saw on each dataset is printed and kept in the JSON ("motionnet_input").
Frames are edge-padded to a multiple of 32 (bottom/right) and the full-resolution flow
(flow2 upsampled x2) is cropped back. Without --motionnet, --quick trains a --flavour
(default tiny) --num-frames MotionNet for --train-steps steps on synthetic 64x64 clips with
the unsupervised loss alone (reported as e.g. "tiny-11f, trained N steps"); otherwise
MotionNet is an untrained (random-init) network and is reported as "untrained".

    .venv/bin/python bench/flow_quality.py --quick                        # ~1-3 min, 2 cores
    .venv/bin/python bench/flow_quality.py --quick --flow-dev ../shared/data/flow_dev   # ~9 min: TV-L1
        # takes ~40 s per 512x384 FlyingChairs pair on one (busy) core, 6 of the 9 minutes
    .venv/bin/python bench/flow_quality.py --motionnet out/pretrain/motionnet.pt --flavour paper \
        --num-frames 11 --middlebury /data/middlebury --sintel /data/MPI-Sintel/training

Writes bench/results/flow_quality.json: {"epe": {METHOD: {DATASET: epe}}, "epe_original_px": ...,
"motionnet": ..., "motionnet_input": {DATASET: ...}, "pairs": ..., "sizes": ..., ...}.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import format_table, write_results  # noqa: E402
from h2s_dist.data.flow_io import average_epe  # noqa: E402
from h2s_dist.data.flow_sets import (  # noqa: E402,F401  (FlowPair and the readers: tests reach them here too)
    FLOW_DEV_SETS,
    FlowPair,
    read_flow_dev,
    read_middlebury,
    read_sintel,
    resize_pair,
    synthetic_pairs,
)

METHODS = ("motionnet", "tvl1", "farneback", "zero")
FlowMethod = Callable[["FlowPair"], np.ndarray]  # a pair -> its flow (H, W, 2), px


# ----------------------------------------------------------------------------- methods


def pairwise(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> FlowMethod:
    """A FlowMethod from a function of (frame1, frame2): the two-frame methods."""
    return lambda pair: fn(pair.frame1, pair.frame2)


def zero_flow(frame1: np.ndarray, frame2: np.ndarray) -> np.ndarray:
    return np.zeros(frame1.shape[:2] + (2,), np.float32)


def tvl1_method(frame1: np.ndarray, frame2: np.ndarray) -> np.ndarray:
    from h2s_dist.baseline.tvl1 import tvl1_flow

    return tvl1_flow(frame1, frame2)  # OpenCV's default (the two-stream releases') settings


def farneback_method(frame1: np.ndarray, frame2: np.ndarray) -> np.ndarray:
    """OpenCV Farneback with its commonly used settings (pyr 0.5, 3 levels, window 15)."""
    import cv2

    from h2s_dist.baseline.tvl1 import to_gray

    return cv2.calcOpticalFlowFarneback(to_gray(frame1), to_gray(frame2), None, 0.5, 3, 15, 3, 5, 1.2, 0)


def motionnet_input(pairs: list[FlowPair], num_frames: int) -> str:
    """What a `num_frames` MotionNet sees for `pairs`, in words (printed and kept in the JSON)."""
    if num_frames == 2:
        return "the pair itself (2-frame network)"
    windowed = [p.window is not None and len(p.window) >= num_frames for p in pairs]
    if all(windowed):
        return f"the pair inside a real {num_frames}-frame window"
    bare = f"bare pair: frame2 repeated to {num_frames} frames (f1, f2, ..., f2), flow 0 scored"
    return bare if not any(windowed) else f"{sum(windowed)} pairs in a real window, the others {bare}"


def motionnet_method(model) -> FlowMethod:
    """A FlowMethod running `model` (a MotionNet) on a pair (h2s_dist.train.flow_eval)."""
    from h2s_dist.train.flow_eval import motionnet_flow

    model.eval()
    return lambda pair: motionnet_flow(model, pair)


def train_quick_motionnet(steps: int, num_frames: int = 11, flavour: str = "tiny", size: int = 64, batch: int = 4,
                          seed: int = 0):
    """A `flavour` `num_frames` MotionNet (tiny by default) trained `steps` Adam steps on synthetic clips (unsupervised
    loss only), on videos of another seed than the scored ones; lr 1e-3, x0.2 at 70 %.

    Smoothness weight 0.1, as in jobs/quickstart.yaml: at the paper's 1.0 the alpha-0.3
    Charbonnier (steepest at differences of ~eps) holds a fresh network at zero flow for
    hundreds of steps, how many depends on the seed (EPE after 600 steps: 0.84, 0.82 px for
    two seeds; zero flow 0.85), where 0.1 gave 0.50 and 0.48."""
    import torch

    from h2s_dist.data.synthetic import SyntheticMotionConfig, make_video
    from h2s_dist.frames import denormalize, normalize
    from h2s_dist.losses import UnsupervisedLossConfig, unsupervised_flow_loss
    from h2s_dist.models import build_motionnet

    torch.manual_seed(seed)
    loss_config = UnsupervisedLossConfig(smoothness_weight=0.1)
    config = SyntheticMotionConfig(num_videos=64, num_frames=num_frames + 8, height=size, width=size, seed=seed + 7)
    videos = [torch.from_numpy(make_video(config, i).frames).permute(0, 3, 1, 2) for i in range(config.num_videos)]
    net = build_motionnet(flavour, num_frames=num_frames)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        if step == int(0.7 * steps):
            for group in opt.param_groups:
                group["lr"] = 2e-4
        picks = [(int(rng.integers(len(videos))), int(rng.integers(config.num_frames - num_frames + 1)))
                 for _ in range(batch)]
        x = normalize(torch.stack([videos[v][t:t + num_frames] for v, t in picks]))
        loss, _ = unsupervised_flow_loss(denormalize(x), net(x), loss_config)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def load_motionnet(uri: str, flavour: str, num_frames: int):
    from h2s_dist.models import build_motionnet
    from h2s_dist.weights import load_weights

    net = build_motionnet(flavour, num_frames=num_frames)
    load_weights(net, uri)
    return net.eval()


# ----------------------------------------------------------------------------- scoring


def pair_epe(pred: np.ndarray, pair: FlowPair) -> tuple[float, float]:
    """(average EPE in the pair's pixels, the same in original pixels: flows divided by pair.scale)."""
    epe = average_epe(pred, pair.flow, pair.valid)
    if pair.scale == (1.0, 1.0):
        return epe, epe
    scale = np.array(pair.scale, np.float32)
    return epe, average_epe(pred / scale, pair.flow / scale, pair.valid)


def dataset_epe(method: FlowMethod, pairs: list[FlowPair]) -> tuple[float, float, float]:
    """(mean over pairs of the pair's average EPE, the same in original pixels, seconds per pair)."""
    epes, start = [], time.perf_counter()
    for pair in pairs:
        epes.append(pair_epe(method(pair), pair))
    epe, epe_original = np.mean(epes, axis=0)
    return float(epe), float(epe_original), (time.perf_counter() - start) / len(pairs)


def evaluate(methods: dict[str, FlowMethod], datasets: dict[str, list[FlowPair]]) -> dict[str, dict]:
    """{"epe": {method: {dataset: epe}}, "epe_original_px": {...}, "seconds_per_pair": {...}}.
    "epe" is in the pixels the pairs were scored at, "epe_original_px" in the dataset's own."""
    result: dict[str, dict[str, dict[str, float]]] = {
        key: {m: {} for m in methods} for key in ("epe", "epe_original_px", "seconds_per_pair")}
    for dataset, pairs in datasets.items():
        for name, method in methods.items():
            epe, epe_original, seconds = dataset_epe(method, pairs)
            result["epe"][name][dataset] = epe
            result["epe_original_px"][name][dataset] = epe_original
            result["seconds_per_pair"][name][dataset] = seconds
            original = f" ({epe_original:.3f} original px)" if epe_original != epe else ""
            print(f"  {name:10s} {dataset:14s} EPE {epe:7.3f} px{original} ({seconds * 1e3:.0f} ms/pair)", flush=True)
    return result


def scored_sizes(datasets: dict[str, list[FlowPair]]) -> dict[str, list[str]]:
    """{dataset: ["WxH -> wxh", ...]}: each distinct original size and the size scored."""
    sizes = {}
    for name, pairs in datasets.items():
        seen = []
        for p in pairs:
            h, w = p.frame1.shape[:2]
            text = f"{round(w / p.scale[0])}x{round(h / p.scale[1])} -> {w}x{h}"
            if text not in seen:
                seen.append(text)
        sizes[name] = seen
    return sizes


def _iter_datasets(args: argparse.Namespace) -> Iterator[tuple[str, list[FlowPair]]]:
    yield "synthetic", synthetic_pairs(args.synthetic_pairs, args.synthetic_size[1], args.synthetic_size[0])
    if args.flow_dev:
        yield from read_flow_dev(args.flow_dev).items()
    if args.middlebury:
        yield "middlebury", read_middlebury(args.middlebury)
    if args.sintel:
        for render_pass in ("clean", "final"):
            if (pathlib.Path(args.sintel) / render_pass).is_dir():
                yield f"sintel_{render_pass}", read_sintel(args.sintel, render_pass, args.sintel_pairs_per_scene)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few synthetic pairs, a briefly trained tiny MotionNet")
    p.add_argument("--motionnet", help="URI of MotionNet weights (state dict)")
    p.add_argument("--flavour", choices=("paper", "small", "tiny"), default=None,
                   help="MotionNet flavour (default: paper; the one --quick trains: tiny)")
    p.add_argument("--num-frames", type=int, default=11,
                   help="MotionNet window T (2 = the paper's 'MotionNet (2 frames)', scored on the pair itself)")
    p.add_argument("--train-steps", type=int, default=600, help="--quick without --motionnet: MotionNet steps")
    p.add_argument("--flow-dev", help="root of the flow dev set (flyingchairs/, kitti/, yosemite/)")
    p.add_argument("--middlebury", help="root of the Middlebury flow set (other-data/, other-gt-flow/)")
    p.add_argument("--sintel", help="root of MPI-Sintel training (clean/, final/, flow/)")
    p.add_argument("--sintel-pairs-per-scene", type=int, default=None, help="evenly spaced pairs per scene (all)")
    p.add_argument("--max-side", type=int, default=None,
                   help="shrink pairs whose longer side exceeds this, flow scaled with them "
                        "(default: none; --quick 512); 0 = never")
    p.add_argument("--synthetic-pairs", type=int, default=None, help="synthetic pairs (default 36; --quick 18)")
    p.add_argument("--synthetic-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="synthetic frame size (default 160 128; --quick 96 64)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    args = p.parse_args(argv)
    args.synthetic_pairs = args.synthetic_pairs or (18 if args.quick else 36)
    args.synthetic_size = tuple(args.synthetic_size or ((96, 64) if args.quick else (160, 128)))
    if args.max_side is None:
        args.max_side = 512 if args.quick else 0
    if args.max_side < 0 or args.num_frames < 2:
        p.error("--max-side must be >= 0 and --num-frames >= 2")
    return args


def _build_motionnet(args: argparse.Namespace):
    """(network, how it was made) for the MotionNet column."""
    if args.motionnet:
        flavour = args.flavour or "paper"
        return (load_motionnet(args.motionnet, flavour, args.num_frames),
                f"{flavour}-{args.num_frames}f from {args.motionnet}")
    if args.quick:
        flavour = args.flavour or "tiny"
        return (train_quick_motionnet(args.train_steps, args.num_frames, flavour),
                f"{flavour}-{args.num_frames}f, trained {args.train_steps} steps on synthetic clips (unsupervised)")
    flavour = args.flavour or "paper"
    return (load_motionnet_untrained(flavour, args.num_frames),
            f"untrained (random init) {flavour}-{args.num_frames}f")


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    methods: dict[str, FlowMethod] = {}
    motionnet_note = None
    if "motionnet" in args.methods:
        start = time.perf_counter()
        net, motionnet_note = _build_motionnet(args)
        print(f"MotionNet: {motionnet_note} ({time.perf_counter() - start:.0f} s)", flush=True)
        methods["motionnet"] = motionnet_method(net)
    table = {"tvl1": tvl1_method, "farneback": farneback_method, "zero": zero_flow}
    methods.update({m: pairwise(table[m]) for m in args.methods if m in table})
    datasets = {name: [resize_pair(p, args.max_side or None) for p in pairs]
                for name, pairs in _iter_datasets(args)}
    sizes = scored_sizes(datasets)
    listed = [f"{k} ({len(v)} pairs, {'; '.join(sizes[k])})" for k, v in datasets.items()]
    print(f"datasets: {', '.join(listed)}", flush=True)
    result = evaluate(methods, datasets)
    inputs = {name: motionnet_input(pairs, args.num_frames) for name, pairs in datasets.items()}
    names = list(datasets)
    print()
    print(format_table(["method", *names], [[m, *(result["epe"][m][d] for d in names)] for m in methods], ".3f"))
    if any(s.split(" -> ")[0] != s.split(" -> ")[1] for v in sizes.values() for s in v):
        print("\nEPE in original pixels (the flows of resized pairs divided by the resize factor):")
        print(format_table(["method", *names], [[m, *(result["epe_original_px"][m][d] for d in names)]
                                                for m in methods], ".3f"))
    if motionnet_note:
        print(f"\nMotionNet: {motionnet_note}; input per dataset:")
        for name, text in inputs.items():
            print(f"  {name}: {text}")
    payload = {**result, "motionnet": motionnet_note, "motionnet_input": inputs,
               "pairs": {k: len(v) for k, v in datasets.items()}, "sizes": sizes,
               "settings": {"synthetic_size_wh": list(args.synthetic_size), "threads": args.threads,
                            "max_side": args.max_side or None,
                            "epe": ("mean over pairs of per-pair average EPE (valid, known-gt pixels), in the "
                                    "pixels of the scored (possibly resized) pairs; epe_original_px: the same "
                                    "with both flows divided by the resize factor"),
                            "resize": "frames PIL bilinear; ground truth nearest neighbour, u x w'/w, v x h'/h",
                            "yosemite": "the sky (uniform gt (1, 0), black in the frames) is not scored",
                            "tvl1": "OpenCV DualTVL1 defaults", "farneback": "pyr 0.5, 3 levels, win 15, 3 it"}}
    path = write_results("flow_quality", payload)
    print(f"wrote {path}")
    return payload


def load_motionnet_untrained(flavour: str, num_frames: int):
    import torch

    from h2s_dist.models import build_motionnet

    torch.manual_seed(0)
    return build_motionnet(flavour, num_frames=num_frames).eval()


if __name__ == "__main__":
    main()
