"""Flow quality: average end-point error (EPE, pixels) of MotionNet, TV-L1, Farneback and zero flow.

Datasets:
  - `synthetic`: pairs of `h2s_dist.data.synthetic.make_video` (exact flow, `valid` mask:
    destination inside the frame and not occluded);
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

MotionNet: `--motionnet URI` (a state dict, e.g. pretrain_motionnet's `motionnet` output)
with `--flavour` and `--num-frames`. A T-frame network is scored on the flow of the pair
inside a real T-frame window where the dataset has one (synthetic videos: the pair is the
middle of an 11-frame clip, so the network sees the motion it was trained on); on a bare
pair (Middlebury) it sees the pair padded to its window by repeating the second frame
(f1, f2, f2, ..., f2) and flow 0 is scored. Frames are edge-padded to a multiple of 32
(bottom/right) and the full-resolution flow (flow2 upsampled x2) is cropped back. Without
--motionnet, --quick trains a tiny 11-frame MotionNet for --train-steps steps on synthetic
clips with the unsupervised loss alone (reported as "tiny-11f, trained N steps"); otherwise
MotionNet is an untrained (random-init) network and is reported as "untrained".

    .venv/bin/python bench/flow_quality.py --quick                        # ~1-3 min, 2 cores
    .venv/bin/python bench/flow_quality.py --motionnet out/pretrain/motionnet.pt --flavour paper \
        --num-frames 11 --middlebury /data/middlebury --sintel /data/MPI-Sintel/training

Writes bench/results/flow_quality.json: {"epe": {METHOD: {DATASET: epe}}, "pairs": ..., ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import format_table, write_results  # noqa: E402
from h2s_dist.data.flow_io import average_epe, read_flo  # noqa: E402

SIZE_MULTIPLE = 32
METHODS = ("motionnet", "tvl1", "farneback", "zero")
FlowMethod = Callable[["FlowPair"], np.ndarray]  # a pair -> its flow (H, W, 2), px


@dataclasses.dataclass(frozen=True)
class FlowPair:
    """frame1, frame2 (H, W, 3) uint8 RGB; flow (H, W, 2) float32 px frame1 -> frame2 (NaN =
    unknown); valid (H, W) bool or None (all pixels with known flow). window (T, H, W, 3)
    uint8: the video around the pair where the dataset has it, frame1 = window[window_index]
    and frame2 = window[window_index + 1]; None for a bare pair."""

    name: str
    frame1: np.ndarray
    frame2: np.ndarray
    flow: np.ndarray
    valid: np.ndarray | None = None
    window: np.ndarray | None = None
    window_index: int = 0


# ----------------------------------------------------------------------------- datasets


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB (grey images are replicated on 3 channels)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_middlebury(root: str | os.PathLike) -> list[FlowPair]:
    """Every sequence of the Middlebury "other" set with ground truth (frame10 -> frame11)."""
    root = pathlib.Path(root)
    gt_dir = root / "other-gt-flow"
    data_dirs = [root / "other-data", root / "other-data-gray"]
    if not gt_dir.is_dir():
        raise ValueError(f"{root} has no other-gt-flow/ folder: pass the folder holding other-data/ and other-gt-flow/")
    pairs = []
    for flo in sorted(gt_dir.glob("*/flow10.flo")):
        name = flo.parent.name
        folder = next((d / name for d in data_dirs if (d / name / "frame10.png").is_file()), None)
        if folder is None:
            raise ValueError(f"ground truth for {name} but no other-data[-gray]/{name}/frame10.png under {root}")
        pairs.append(FlowPair(name, read_rgb(folder / "frame10.png"), read_rgb(folder / "frame11.png"), read_flo(flo)))
    if not pairs:
        raise ValueError(f"no other-gt-flow/NAME/flow10.flo under {root}")
    return pairs


def read_sintel(root: str | os.PathLike, render_pass: str = "clean", max_pairs_per_scene: int | None = None
                ) -> list[FlowPair]:
    """MPI-Sintel training pairs of `render_pass` ("clean" or "final"): frame_XXXX -> frame_XXXX+1
    with flow/SCENE/frame_XXXX.flo; at most `max_pairs_per_scene` evenly spaced pairs per scene."""
    root = pathlib.Path(root)
    if render_pass not in ("clean", "final"):
        raise ValueError(f"render_pass must be 'clean' or 'final', got {render_pass!r}")
    if not (root / "flow").is_dir() or not (root / render_pass).is_dir():
        raise ValueError(f"{root} needs flow/ and {render_pass}/ folders (the MPI-Sintel training layout)")
    pairs = []
    for scene in sorted(p for p in (root / "flow").iterdir() if p.is_dir()):
        flos = sorted(scene.glob("frame_*.flo"))
        if max_pairs_per_scene and len(flos) > max_pairs_per_scene:
            flos = [flos[i] for i in np.linspace(0, len(flos) - 1, max_pairs_per_scene).round().astype(int)]
        for flo in flos:
            number = int(flo.stem.split("_")[1])
            first = root / render_pass / scene.name / f"frame_{number:04d}.png"
            second = root / render_pass / scene.name / f"frame_{number + 1:04d}.png"
            if not (first.is_file() and second.is_file()):
                raise ValueError(f"{flo} has no frame pair {first.name}, {second.name} in {first.parent}")
            pairs.append(FlowPair(f"{scene.name}/{number:04d}", read_rgb(first), read_rgb(second), read_flo(flo)))
    if not pairs:
        raise ValueError(f"no flow/SCENE/frame_XXXX.flo under {root}")
    return pairs


def synthetic_pairs(num_videos: int, height: int, width: int, seed: int = 123,
                    window_frames: int = 11) -> list[FlowPair]:
    """One pair per synthetic video, every class in turn, with sprites: the middle pair of a
    `window_frames`-frame clip (frames k, k+1 with k = (window_frames - 1) // 2), clip kept."""
    from h2s_dist.data.synthetic import SyntheticMotionConfig, make_video

    config = SyntheticMotionConfig(num_videos=num_videos, num_frames=window_frames, height=height, width=width,
                                   seed=seed, num_sprites=(0, 2))
    k = (window_frames - 1) // 2
    pairs = []
    for i in range(num_videos):
        video = make_video(config, i)
        pairs.append(FlowPair(video.key, video.frames[k], video.frames[k + 1], video.flows[k], video.valid[k],
                              window=video.frames, window_index=k))
    return pairs


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


def pad_to_multiple(frames: np.ndarray, multiple: int = SIZE_MULTIPLE) -> np.ndarray:
    """(..., H, W, C) -> edge-padded at the bottom and right to multiples of `multiple`."""
    h, w = frames.shape[-3:-1]
    pad_h, pad_w = -h % multiple, -w % multiple
    widths = [(0, 0)] * (frames.ndim - 3) + [(0, pad_h), (0, pad_w), (0, 0)]
    return np.pad(frames, widths, mode="edge") if pad_h or pad_w else frames


def motionnet_window(pair: FlowPair, num_frames: int) -> tuple[np.ndarray, int]:
    """(T frames for a T-frame MotionNet, index of the pair's flow among its T-1 flows):
    the real frames around the pair when `pair.window` has enough, else the pair padded by
    repeating frame2 (flow 0 scored)."""
    window = pair.window
    if window is not None and len(window) >= num_frames:
        start = min(max(pair.window_index - (num_frames - 1) // 2, 0), len(window) - num_frames)
        return window[start:start + num_frames], pair.window_index - start
    return np.stack([pair.frame1] + [pair.frame2] * (num_frames - 1)), 0


def motionnet_method(model) -> FlowMethod:
    """A FlowMethod running `model` (a MotionNet) on a pair, see the module docstring."""
    import torch

    from h2s_dist.frames import normalize
    from h2s_dist.models import full_resolution_flow

    num_frames = model.config.num_frames
    model.eval()

    def method(pair: FlowPair) -> np.ndarray:
        h, w = pair.frame1.shape[:2]
        frames, index = motionnet_window(pair, num_frames)
        padded = pad_to_multiple(frames)
        x = normalize(torch.from_numpy(np.ascontiguousarray(padded)).permute(0, 3, 1, 2))[None]
        with torch.inference_mode():
            flow2 = model(x)[-1]
        flow = full_resolution_flow(flow2, padded.shape[1:3])[0, index]  # (2, Hp, Wp)
        return flow[:, :h, :w].permute(1, 2, 0).numpy().astype(np.float32)

    return method


def train_tiny_motionnet(steps: int, num_frames: int = 11, size: int = 64, batch: int = 4, seed: int = 0):
    """A tiny `num_frames` MotionNet trained `steps` Adam steps on synthetic clips (unsupervised
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
    net = build_motionnet("tiny", num_frames=num_frames)
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


def dataset_epe(method: FlowMethod, pairs: list[FlowPair]) -> tuple[float, float]:
    """(mean over pairs of the pair's average EPE, seconds per pair)."""
    epes, start = [], time.perf_counter()
    for pair in pairs:
        pred = method(pair)
        epes.append(average_epe(pred, pair.flow, pair.valid))
    return float(np.mean(epes)), (time.perf_counter() - start) / len(pairs)


def evaluate(methods: dict[str, FlowMethod], datasets: dict[str, list[FlowPair]]) -> dict[str, dict]:
    """{"epe": {method: {dataset: epe}}, "seconds_per_pair": {method: {dataset: s}}}."""
    epe: dict[str, dict[str, float]] = {m: {} for m in methods}
    seconds: dict[str, dict[str, float]] = {m: {} for m in methods}
    for dataset, pairs in datasets.items():
        for name, method in methods.items():
            epe[name][dataset], seconds[name][dataset] = dataset_epe(method, pairs)
            print(f"  {name:10s} {dataset:14s} EPE {epe[name][dataset]:7.3f} px "
                  f"({seconds[name][dataset] * 1e3:.0f} ms/pair)", flush=True)
    return {"epe": epe, "seconds_per_pair": seconds}


def _iter_datasets(args: argparse.Namespace) -> Iterator[tuple[str, list[FlowPair]]]:
    yield "synthetic", synthetic_pairs(args.synthetic_pairs, args.synthetic_size[1], args.synthetic_size[0])
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
    p.add_argument("--flavour", choices=("paper", "tiny"), default="paper", help="MotionNet flavour of --motionnet")
    p.add_argument("--num-frames", type=int, default=11, help="MotionNet window of --motionnet")
    p.add_argument("--train-steps", type=int, default=600, help="--quick without --motionnet: tiny MotionNet steps")
    p.add_argument("--middlebury", help="root of the Middlebury flow set (other-data/, other-gt-flow/)")
    p.add_argument("--sintel", help="root of MPI-Sintel training (clean/, final/, flow/)")
    p.add_argument("--sintel-pairs-per-scene", type=int, default=None, help="evenly spaced pairs per scene (all)")
    p.add_argument("--synthetic-pairs", type=int, default=None, help="synthetic pairs (default 36; --quick 18)")
    p.add_argument("--synthetic-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="synthetic frame size (default 160 128; --quick 96 64)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    args = p.parse_args(argv)
    args.synthetic_pairs = args.synthetic_pairs or (18 if args.quick else 36)
    args.synthetic_size = tuple(args.synthetic_size or ((96, 64) if args.quick else (160, 128)))
    return args


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
        if args.motionnet:
            net = load_motionnet(args.motionnet, args.flavour, args.num_frames)
            motionnet_note = f"{args.flavour}-{args.num_frames}f from {args.motionnet}"
        elif args.quick:
            net = train_tiny_motionnet(args.train_steps)
            motionnet_note = f"tiny-11f, trained {args.train_steps} steps on synthetic clips (unsupervised)"
        else:
            net = load_motionnet_untrained(args.flavour, args.num_frames)
            motionnet_note = f"untrained (random init) {args.flavour}-{args.num_frames}f"
        print(f"MotionNet: {motionnet_note} ({time.perf_counter() - start:.0f} s)", flush=True)
        methods["motionnet"] = motionnet_method(net)
    table = {"tvl1": tvl1_method, "farneback": farneback_method, "zero": zero_flow}
    methods.update({m: pairwise(table[m]) for m in args.methods if m in table})
    datasets = dict(_iter_datasets(args))
    print(f"datasets: {', '.join(f'{k} ({len(v)} pairs)' for k, v in datasets.items())}", flush=True)
    result = evaluate(methods, datasets)
    names = list(datasets)
    print()
    print(format_table(["method", *names], [[m, *(result["epe"][m][d] for d in names)] for m in methods], ".3f"))
    payload = {**result, "motionnet": motionnet_note, "pairs": {k: len(v) for k, v in datasets.items()},
               "settings": {"synthetic_size_wh": list(args.synthetic_size), "threads": args.threads,
                            "epe": "mean over pairs of per-pair average EPE (valid, known-gt pixels), pixels",
                            "motionnet_window": ("synthetic: the pair in the middle of its real window; bare pairs: "
                                                 "second frame repeated to the window, flow 0 scored"),
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
