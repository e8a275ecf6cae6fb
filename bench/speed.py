"""End-to-end speed: frames per second of hidden two-stream against the two-stage baselines.

Frames per second (fps) = video frames turned into class scores per second, counting 10
frames for each 11-frame window (one per flow field) for every method alike, in the
single-window, centre-crop setting of the paper's Table 2. Input: decoded frames of
synthetic videos (h2s_dist.data.synthetic), already at --size x --size (the centre crop;
decoding is the same for every method and excluded). Methods, all measured in one run:

  hidden_two_stream     spatial VGG16 (centre frame) + stacked temporal stream (MotionNet ->
                        FlowNormalize -> 20-channel VGG16), release fusion 1 : 1.5
  stacked_temporal      the stacked temporal stream alone
  tvl1_two_stage        OpenCV Dual TV-L1 (default settings) on the 10 pairs -> 8-bit
                        quantisation -> temporal VGG16, plus the spatial stream, fused
  tvl1_temporal         the TV-L1 temporal stream alone (the paper's 14.75 fps row)
  farneback_two_stage   as tvl1_two_stage with cv2.calcOpticalFlowFarneback
  spatial               the spatial VGG16 alone

Each CNN (spatial, stacked, flow VGG16) runs in its fastest configuration that keeps its
scores within --tolerance (relative L2) of fp32 on the same inputs: candidates are fp32,
channels_last, bf16 autocast (CPUs with avx512_bf16/AMX, and CUDA) and torch.compile
(--compile; default on for full runs and CUDA, off for --quick because inductor compiles
for minutes on 2 cores). Windows are batched (--batch). OpenCV flow runs with all cores,
either as OpenCV's own threads or as one pair per thread, whichever is faster.
Weights are random (speed does not depend on them).

The 25 x 10 protocol throughput is derived from the same measurements: per video of
--protocol-frames frames (UCF101 mean ~175 at 25 fps), 25 windows x 10 crops = 250 CNN
inputs per stream, flow of every pair the windows use, counted as 25 x 10 = 250 frames.

    .venv/bin/python bench/speed.py --quick                # ~3-5 min on 2 cores (paper nets, 128 px)
    .venv/bin/python bench/speed.py --size 224 --batch 8   # the paper's resolution

Writes bench/results/speed.json: {"fps": {method: fps}, "protocol_fps": ..., "configs": ...}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import pathlib
import sys
import threading
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import PAPER_TABLE2, format_table, median_seconds, write_results  # noqa: E402
from h2s_dist import frames as frame_conv  # noqa: E402
from h2s_dist.baseline import tvl1  # noqa: E402
from h2s_dist.data.flow_shards import stack_channels, to_network_input  # noqa: E402
from h2s_dist.data.transforms import eval_window_starts  # noqa: E402
from h2s_dist.inference import cpu_has_bf16  # noqa: E402
from h2s_dist.models import StackedTemporalStream, build_motionnet, build_vgg16, fuse_scores  # noqa: E402

NUM_FRAMES = 11
FRAMES_PER_WINDOW = NUM_FRAMES - 1  # the fps convention: one frame per flow field
NUM_CLASSES = 101
FUSION = (1.0, 1.5)
METHODS = ("hidden_two_stream", "stacked_temporal", "tvl1_two_stage", "tvl1_temporal", "farneback_two_stage",
           "spatial")
PAPER_FPS = {"hidden_two_stream": PAPER_TABLE2["hidden_two_stream_c"]["fps"],
             "stacked_temporal": PAPER_TABLE2["stacked_c"]["fps"],
             "tvl1_two_stage": PAPER_TABLE2["two_stream_tvl1"]["fps"],
             "tvl1_temporal": PAPER_TABLE2["tvl1_two_stage"]["fps"]}


# ----------------------------------------------------------------------------- CNN configurations


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """How a network runs: memory format, bf16 autocast, torch.compile."""

    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        parts = [p for p, on in (("channels_last", self.channels_last), ("bf16", self.bf16),
                                 ("compile", self.compile)) if on]
        return "+".join(parts) or "fp32"


def candidate_configs(device: torch.device, allow_compile: bool) -> list[CNNConfig]:
    """fp32 first (the reference), then the variants worth trying on `device`."""
    bf16 = device.type == "cuda" or cpu_has_bf16()
    out = [CNNConfig(), CNNConfig(channels_last=True)]
    if bf16:
        out += [CNNConfig(bf16=True), CNNConfig(channels_last=True, bf16=True)]
    if allow_compile:
        best_eager = out[-1]
        out += [CNNConfig(compile=True), dataclasses.replace(best_eager, compile=True)]
    return list(dict.fromkeys(out))


Runner = Callable[[torch.Tensor], torch.Tensor]


def make_runner(model: torch.nn.Module, config: CNNConfig, device: torch.device) -> Runner:
    """x (normalised input on any device) -> float32 pre-softmax scores (B, C) on `device`."""
    model = model.to(device).eval()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = torch.compile(model) if config.compile else model

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            out = fn(x)
        return (out.scores if hasattr(out, "scores") else out).float()

    return run


def relative_error(scores: torch.Tensor, reference: torch.Tensor) -> float:
    """||scores - reference|| / ||reference|| (L2 over everything)."""
    return float((scores - reference).norm() / reference.norm().clamp_min(1e-12))


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def choose_config(name: str, build: Callable[[], torch.nn.Module], x: torch.Tensor, device: torch.device,
                  configs: list[CNNConfig], args: argparse.Namespace) -> tuple[Runner, list[dict]]:
    """Time every config of one network on input x; the fastest within tolerance wins."""
    rows, best, reference = [], None, None
    for config in configs:
        torch.manual_seed(0)  # same weights for every config
        try:
            runner = make_runner(build(), config, device)
            seconds = median_seconds(lambda: runner(x), args.warmup + (2 if config.compile else 0), args.repeats,
                                     _sync(device))
            scores = runner(x).cpu()
        except Exception as err:  # a variant that fails here (compiler missing, ...) is reported, not fatal
            rows.append({"network": name, "config": config.name, "error": f"{type(err).__name__}: {err}"[:300]})
            print(f"  {name:9s} {config.name:28s} failed: {rows[-1]['error']}", flush=True)
            continue
        reference = scores if reference is None else reference
        error = relative_error(scores, reference)
        ok = error <= args.tolerance
        rows.append({"network": name, "config": config.name, "ms_per_window": 1e3 * seconds / x.shape[0],
                     "relative_error_vs_fp32": error, "within_tolerance": ok})
        print(f"  {name:9s} {config.name:28s} {rows[-1]['ms_per_window']:9.1f} ms/window  rel.err {error:.1e}"
              f"{'' if ok else '  (rejected)'}", flush=True)
        if ok and (best is None or seconds < best[0]):
            best = (seconds, runner, config)
    if best is None:
        raise RuntimeError(f"no configuration of {name} ran; see the errors above")
    for row in rows:
        row["chosen"] = row.get("config") == best[2].name
    return best[1], rows


# ----------------------------------------------------------------------------- optical flow


class FlowEngine:
    """Quantised flow of the 10 pairs of each window, with every core busy.

    mode "opencv_threads": pairs one after another, OpenCV parallelises inside each;
    mode "pair_threads": one pair per thread (OpenCV releases the GIL), one solver per thread."""

    def __init__(self, kind: str, mode: str, num_threads: int) -> None:
        import cv2

        self.kind, self.mode, self.num_threads = kind, mode, num_threads
        self._local = threading.local()
        cv2.setNumThreads(num_threads if mode == "opencv_threads" else 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(num_threads) if mode == "pair_threads" else None

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import cv2

        if self.kind == "farneback":
            return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        solver = getattr(self._local, "solver", None)
        if solver is None:  # the solver keeps buffers between calls: one per thread
            p = tvl1.DEFAULT_PARAMS
            solver = self._local.solver = cv2.optflow.DualTVL1OpticalFlow_create(
                tau=p.tau, lambda_=p.lambda_, theta=p.theta, nscales=p.num_scales, warps=p.num_warps,
                epsilon=p.epsilon, innnerIterations=p.inner_iterations, outerIterations=p.outer_iterations,
                scaleStep=p.scale_step, medianFiltering=p.median_filtering)
        return solver.calc(a, b, None)

    def window_stacks(self, windows: np.ndarray) -> np.ndarray:
        """windows (B, T, H, W, 3) uint8 -> (B, 2(T-1), H, W) uint8 quantised stacks (u0, v0, u1, ...)."""
        gray = [[tvl1.to_gray(f) for f in w] for w in windows]
        jobs = [(g[i], g[i + 1]) for g in gray for i in range(len(g) - 1)]
        if self._pool is not None:
            flows = list(self._pool.map(lambda ab: self._flow(*ab), jobs))
        else:
            flows = [self._flow(a, b) for a, b in jobs]
        q = tvl1.quantize_flow(np.stack(flows)).reshape(windows.shape[0], windows.shape[1] - 1, *flows[0].shape)
        return stack_channels(q)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def choose_flow_engine(kind: str, windows: np.ndarray, args: argparse.Namespace) -> tuple[FlowEngine, list[dict]]:
    """The faster of OpenCV's threads and one pair per thread, on one window; both results agree."""
    rows, best = [], None
    for mode in ("opencv_threads", "pair_threads"):
        engine = FlowEngine(kind, mode, args.cv_threads)
        seconds = median_seconds(lambda: engine.window_stacks(windows[:1]), 1 if kind == "farneback" else 0,
                                 max(1, args.repeats - 1), lambda: None)
        rows.append({"flow": kind, "mode": mode, "threads": args.cv_threads, "ms_per_pair":
                     1e3 * seconds / FRAMES_PER_WINDOW})
        print(f"  {kind:9s} {mode:28s} {rows[-1]['ms_per_pair']:9.1f} ms/pair", flush=True)
        if best is None or seconds < best[0]:
            if best is not None:
                best[1].close()
            best = (seconds, engine)
        else:
            engine.close()
    for row in rows:
        row["chosen"] = row["mode"] == best[1].mode
    return best[1], rows


# ----------------------------------------------------------------------------- methods


def synthetic_windows(count: int, size: int, seed: int = 0) -> np.ndarray:
    """(count, 11, size, size, 3) uint8 decoded frames of synthetic videos, one window each."""
    from h2s_dist.data.synthetic import SyntheticMotionConfig, make_video

    config = SyntheticMotionConfig(num_videos=count, num_frames=NUM_FRAMES, height=size, width=size, seed=seed)
    return np.stack([make_video(config, i).frames for i in range(count)])


def build_methods(spatial: Runner, stacked: Runner, flow_vgg: Runner, engines: dict[str, FlowEngine]
                  ) -> dict[str, Callable[[np.ndarray], torch.Tensor]]:
    """method -> f(windows (B, 11, H, W, 3) uint8) -> scores (B, C)."""

    def frames_in(windows: np.ndarray) -> torch.Tensor:
        return frame_conv.normalize(torch.from_numpy(windows).permute(0, 1, 4, 2, 3))

    def centre(windows: np.ndarray) -> torch.Tensor:
        return frame_conv.normalize(torch.from_numpy(windows[:, NUM_FRAMES // 2]).permute(0, 3, 1, 2))

    def fused(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fuse_scores(s.cpu(), t.cpu(), FUSION, "release")

    def flow_scores(kind: str, windows: np.ndarray) -> torch.Tensor:
        return flow_vgg(to_network_input(engines[kind].window_stacks(windows)))

    return {
        "hidden_two_stream": lambda w: fused(spatial(centre(w)), stacked(frames_in(w))),
        "stacked_temporal": lambda w: stacked(frames_in(w)).cpu(),
        "tvl1_two_stage": lambda w: fused(spatial(centre(w)), flow_scores("tvl1", w)),
        "tvl1_temporal": lambda w: flow_scores("tvl1", w).cpu(),
        "farneback_two_stage": lambda w: fused(spatial(centre(w)), flow_scores("farneback", w)),
        "spatial": lambda w: spatial(centre(w)).cpu(),
    }


def protocol_fps(ms_cnn: dict[str, float], ms_pair: dict[str, float], num_frames: int) -> dict[str, float]:
    """25 x 10 protocol throughput (frames per s, 250 frames per video) from per-input CNN times
    and per-pair flow times; flow of each pair the 25 windows use is computed once."""
    starts = eval_window_starts(num_frames, NUM_FRAMES, 25)
    pairs = len({i for s in starts for i in range(s, s + FRAMES_PER_WINDOW)})
    inputs = 25 * 10
    seconds = {
        "hidden_two_stream": inputs * (ms_cnn["spatial"] + ms_cnn["stacked"]),
        "stacked_temporal": inputs * ms_cnn["stacked"],
        "tvl1_two_stage": inputs * (ms_cnn["spatial"] + ms_cnn["flow_vgg"]) + pairs * ms_pair["tvl1"],
        "tvl1_temporal": inputs * ms_cnn["flow_vgg"] + pairs * ms_pair["tvl1"],
        "farneback_two_stage": inputs * (ms_cnn["spatial"] + ms_cnn["flow_vgg"]) + pairs * ms_pair["farneback"],
        "spatial": inputs * ms_cnn["spatial"],
    }
    return {m: 25 * FRAMES_PER_WINDOW / (ms / 1e3) for m, ms in seconds.items()}


# ----------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128 px, batch 2, 2 repeats, no torch.compile")
    p.add_argument("--flavour", choices=("paper", "tiny"), default="paper")
    p.add_argument("--size", type=int, default=None, help="crop side, multiple of 32 (default 224; --quick 128)")
    p.add_argument("--batch", type=int, default=None, help="windows per forward (default 4; --quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; --quick 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--cv-threads", type=int, default=None, help="OpenCV threads (default: all cores)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="try torch.compile variants (auto: on unless --quick on CPU)")
    p.add_argument("--tolerance", type=float, default=0.05, help="max relative L2 error of scores vs fp32")
    p.add_argument("--protocol-frames", type=int, default=175, help="video length for the 25x10 throughput")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fast-sizes", default=None, help="sides of the fast-path section, comma-separated "
                   "(default 224,128; --quick 128,224; 'none' skips it)")
    p.add_argument("--video-windows", type=int, default=None,
                   help="windows per forward of the fast path (a video's 25; --quick 4)")
    p.add_argument("--agreement-model", default=None, metavar="JOB|URI",
                   help="finished job whose trained hidden two-stream guards the fast path's top-1 agreement "
                        "(default the quickstart job under config.JOBS_ROOT when there; 'none' skips)")
    p.add_argument("--agreement-videos", type=int, default=None, help="at most this many test videos (default all)")
    args = p.parse_args(argv)
    args.size = args.size or (128 if args.quick else 224)
    args.batch = args.batch or (2 if args.quick else 4)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.threads = args.threads or os.cpu_count()
    args.cv_threads = args.cv_threads or os.cpu_count()
    sizes = args.fast_sizes or ("128,224" if args.quick else "224,128")
    args.fast_sizes = [] if sizes == "none" else [int(s) for s in sizes.split(",")]
    args.video_windows = args.video_windows or (4 if args.quick else 25)
    if args.size % 32:
        p.error(f"--size must be a multiple of 32 (MotionNet), got {args.size}")
    device = torch.device(args.device)
    args.compile = args.compile == "on" or (args.compile == "auto" and (device.type == "cuda" or not args.quick))
    return args


def fast_path_section(args: argparse.Namespace, tvl1_two_stage: Callable[[np.ndarray], torch.Tensor]) -> dict:
    """bench/fast_path.py's rows at each --fast-sizes side, and the agreement of its variants on trained weights."""
    from bench import fast_path

    if not args.fast_sizes:
        return {}
    print(f"\nfast path (h2s_dist.inference, {args.video_windows} windows per forward) vs TV-L1 two-stage:", flush=True)
    rows = [row for size in args.fast_sizes for row in fast_path.measure_size(size, tvl1_two_stage, synthetic_windows, args)]
    model = fast_path.default_agreement_model() if args.agreement_model is None else args.agreement_model
    agreement = None
    if model and model != "none":
        print(f"top-1 agreement with fp32 on the test videos of {model} (trained weights):", flush=True)
        try:
            agreement = fast_path.stage_agreement(model, args.agreement_videos)
        except Exception as err:  # the timings above stay: they are written without the guard, which says why
            print(f"  no agreement: {type(err).__name__}: {err}", flush=True)
            agreement = {"error": f"{type(err).__name__}: {err}", "agreement": {}, "rejected": []}
        for name, share in agreement["agreement"].items():
            print(f"  {name:36s} {100 * share:6.1f}% of {agreement['num_videos']} videos"
                  f"{'  (rejected)' if name in agreement['rejected'] else ''}", flush=True)
    for row in rows:
        name = row["method"].removeprefix("h2s ")
        share = agreement["agreement"].get(name) if agreement else None
        row["agreement_vs_fp32"] = 1.0 if name == "fp32" else share
    print()
    print(format_table(["size", "method", "windows/forward", "fps", "x TV-L1 two-stage", "top-1 agreement vs fp32"],
                       [[r["size"], r["method"], r["windows"], r["fps"], r["ratio_vs_tvl1"], r["agreement_vs_fp32"]]
                        for r in rows]))
    return {"rows": rows, "agreement": agreement, "video_windows": args.video_windows}


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    windows = synthetic_windows(args.batch, args.size)
    frames = frame_conv.normalize(torch.from_numpy(windows).permute(0, 1, 4, 2, 3))
    configs = candidate_configs(device, args.compile)
    flavour = args.flavour
    print(f"{flavour} networks, {args.size}x{args.size}, batch {args.batch} windows, device {device}, "
          f"torch threads {args.threads}, OpenCV threads {args.cv_threads}; random-init weights", flush=True)

    print("choosing configurations:", flush=True)
    engines, flow_rows = {}, []
    for kind in ("tvl1", "farneback"):
        engines[kind], rows = choose_flow_engine(kind, windows, args)
        flow_rows += rows
    flow_input = to_network_input(engines["tvl1"].window_stacks(windows))
    builders = {
        "spatial": (lambda: build_vgg16(flavour, 3, NUM_CLASSES), frames[:, NUM_FRAMES // 2]),
        "stacked": (lambda: StackedTemporalStream(build_motionnet(flavour, num_frames=NUM_FRAMES),
                                                  build_vgg16(flavour, 2 * FRAMES_PER_WINDOW, NUM_CLASSES),
                                                  "action_only"), frames),
        "flow_vgg": (lambda: build_vgg16(flavour, 2 * FRAMES_PER_WINDOW, NUM_CLASSES), flow_input),
    }
    runners, config_rows = {}, []
    for name, (build, x) in builders.items():
        runners[name], rows = choose_config(name, build, x, device, configs, args)
        config_rows += rows

    print("end to end (frames -> scores):", flush=True)
    methods = build_methods(runners["spatial"], runners["stacked"], runners["flow_vgg"], engines)
    fps, ms_window = {}, {}
    for name, fn in methods.items():
        seconds = median_seconds(lambda: fn(windows), args.warmup, args.repeats, _sync(device))
        ms_window[name] = 1e3 * seconds / args.batch
        fps[name] = args.batch * FRAMES_PER_WINDOW / seconds
        print(f"  {name:20s} {fps[name]:8.2f} fps", flush=True)

    chosen = {r["network"]: r for r in config_rows if r.get("chosen")}
    ms_cnn = {n: chosen[n]["ms_per_window"] for n in builders}
    ms_pair = {r["flow"]: r["ms_per_pair"] for r in flow_rows if r["chosen"]}
    proto = protocol_fps(ms_cnn, ms_pair, args.protocol_frames)
    ratios = {"hidden_two_stream_over_tvl1_two_stage": fps["hidden_two_stream"] / fps["tvl1_two_stage"],
              "stacked_temporal_over_tvl1_temporal": fps["stacked_temporal"] / fps["tvl1_temporal"],
              "hidden_two_stream_over_farneback_two_stage": fps["hidden_two_stream"] / fps["farneback_two_stage"]}
    paper_ratio = PAPER_FPS["hidden_two_stream"] / PAPER_FPS["tvl1_two_stage"]
    configuration = {"spatial": chosen["spatial"]["config"], "stacked": chosen["stacked"]["config"],
                     "flow_vgg": chosen["flow_vgg"]["config"],
                     **{f"{k}_flow": engines[k].mode for k in engines}}
    uses = {"hidden_two_stream": "spatial={spatial}, stacked={stacked}",
            "stacked_temporal": "stacked={stacked}", "tvl1_two_stage": "tvl1 {tvl1_flow}, vgg={flow_vgg}, spatial={spatial}",
            "tvl1_temporal": "tvl1 {tvl1_flow}, vgg={flow_vgg}",
            "farneback_two_stage": "farneback {farneback_flow}, vgg={flow_vgg}, spatial={spatial}",
            "spatial": "spatial={spatial}"}
    print()
    print(format_table(
        ["method", "fps (1 window, centre)", "ms/window", "fps (25x10 protocol)", "paper fps (Titan X)", "configuration"],
        [[m, fps[m], ms_window[m], proto[m], PAPER_FPS.get(m), uses[m].format(**configuration)] for m in METHODS]))
    print(f"\nhidden two-stream / TV-L1 two-stage: {ratios['hidden_two_stream_over_tvl1_two_stage']:.2f}x "
          f"(paper: {paper_ratio:.2f}x); stacked / TV-L1 temporal: "
          f"{ratios['stacked_temporal_over_tvl1_temporal']:.2f}x (paper: "
          f"{PAPER_FPS['stacked_temporal'] / PAPER_FPS['tvl1_temporal']:.2f}x)")
    fast = fast_path_section(args, methods["tvl1_two_stage"])
    payload = {
        "fast_path": fast,
        "fps": fps, "ms_per_window": ms_window, "protocol_fps": proto, "ratios": ratios,
        "paper_fps": PAPER_FPS, "paper_ratio_hidden_over_tvl1_two_stream": paper_ratio,
        "configuration": configuration, "configs": config_rows, "flow_engines": flow_rows,
        "settings": {"flavour": flavour, "size": args.size, "batch": args.batch, "repeats": args.repeats,
                     "warmup": args.warmup, "device": str(device), "torch_threads": args.threads,
                     "cv_threads": args.cv_threads, "tolerance": args.tolerance, "compile_tried": args.compile,
                     "protocol_frames": args.protocol_frames, "weights": "random init",
                     "fps_counting": "10 frames per 11-frame window; decode excluded; single window, centre crop"},
    }
    for engine in engines.values():
        engine.close()
    path = write_results("speed", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
