"""Accuracy on the synthetic motion benchmark, shaped like the paper's Table 2.

Runs the real stages in this process through `h2s_dist.train.launch.launch` with tiny
flavours: ingest synthetic videos, by default `--classes scene_x_motion`: 9 classes = 3 scene
types (palettes and shapes one frame shows) x 3 camera motions, so the spatial stream can tell
the scene and not the motion (~1/3), the temporal streams the motion and not the scene (~1/3),
and only their fusion both, the paper's story (fused > stacked > spatial in its Table 2, here
the fused row well above both); `--classes motion` is the set whose 9 classes differ only by
camera motion (the spatial stream then sits near chance, 1/9, and fusion can only break ties).
Then it pretrains MotionNet, fine-tune the stacked temporal stream in modes (a) frozen, (b) action only,
(c) action + unsupervised, train the spatial stream, compute TV-L1 flows and train the
two-stage temporal stream on them; Table 2's "MotionNet (2 frames) + temporal stream, flows
cached" (a 2-frame MotionNet's flows cached by tvl1_flows `source: motionnet`, a temporal
stream trained on them) and Table 4's proxy-guided MotionNet (pretrained with an EPE term
against the cached TV-L1 flow, --proxy-weight, then fine-tuned in mode (c)); then evaluate each (a)/(b)/(c) with the test protocol
(--num-windows windows x 5 unmirrored crops: the synthetic classes are mirror-sensitive) and late fusion. Everything is seeded (loop.seed,
torch, numpy); with few test videos one video is several points of accuracy, so treat
differences of a few points as noise.

fps here is the protocol's: video frames per second on this machine, counting 10 frames
per window (crops are not frames), from the evaluate stage's timings: decode + CNN for the
frame streams; for TV-L1 the cached-flow CNN time plus the TV-L1 time of the pairs the
windows use (the tvl1_flows stage's ms per pair).

    .venv/bin/python bench/accuracy.py --quick       # ~7-8 min on 2 cores before the Table 2/4 rows; they
                                                     # add ~5 stages (not yet timed on an idle machine)
    .venv/bin/python bench/accuracy.py --quick --seeds 0 1 2   # three times that, means and spread
    .venv/bin/python bench/accuracy.py --num-videos 180 --pretrain-steps 1500 --finetune-steps 1000

Writes bench/results/accuracy.json: {"accuracy": {row: mean top-1 %}, "fps": {row: fps},
"fusion_gain": {fusion: test videos it wins over its temporal stream, per seed}, "per_seed": ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import random
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import PAPER_TABLE2, format_table, write_results  # noqa: E402
from h2s_dist.data.transforms import eval_window_starts  # noqa: E402
from h2s_dist.train.launch import launch  # noqa: E402

MODES = {"a": "frozen", "b": "action_only", "c": "action_plus_unsup"}
TINY = {"flavour": "tiny"}
ROWS = ("spatial", "tvl1_two_stage", "motionnet_cached", "stacked_a", "stacked_b", "stacked_c", "stacked_c_proxy",
        "two_stream_tvl1", "hidden_two_stream_a", "hidden_two_stream_b", "hidden_two_stream_c")
LABELS = {"spatial": "Spatial stream", "tvl1_two_stage": "TV-L1 two-stage temporal stream",
          "stacked_a": "Stacked temporal stream (a)", "stacked_b": "Stacked temporal stream (b)",
          "stacked_c": "Stacked temporal stream (c)", "two_stream_tvl1": "Two-stream (spatial + TV-L1)",
          "hidden_two_stream_a": "Hidden two-stream (a)", "hidden_two_stream_b": "Hidden two-stream (b)",
          "hidden_two_stream_c": "Hidden two-stream (c)",
          "motionnet_cached": "MotionNet (2 frames) + temporal stream, flows cached",
          "stacked_c_proxy": "Stacked temporal stream (c), proxy-guided MotionNet (Table 4)"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _clips(dataset: str, args: argparse.Namespace, **overrides) -> dict:
    # No flips: the synthetic classes are mirror-sensitive (mirrored translate_left is translate_right).
    return {"dataset": dataset, "split": 1, "subset": "train", "clip_len_frames": 11, "crop_size": args.crop,
            "flip": False, "batch_size": 8, "loader_workers": 0, "shuffle_buffer": 16, "epoch_length_samples": 64,
            **overrides}


def _loop(steps: int, seed: int) -> dict:
    # grad_accum_steps 1: the fine-tuning stages default to the paper's 16 (and 4) accumulated
    # batches, which a partial mapping would keep.
    return {"max_steps": steps, "grad_accum_steps": 1, "log_every_steps": max(1, steps // 5),
            "picture_every_steps": 10 * steps, "checkpoint_every_steps": steps, "seed": seed}


def run_stages(work: pathlib.Path, args: argparse.Namespace) -> dict:
    """Every stage in order; returns {stage: outputs} plus per-stage seconds."""
    from h2s_dist.data.ingest import ingest
    from h2s_dist.data.sources import synthetic_entries
    from h2s_dist.data.synthetic import SyntheticMotionConfig
    from h2s_dist.specs.evaluate import EvaluateSpec
    from h2s_dist.specs.training import FinetuneSpec
    from h2s_dist.specs.training import PretrainSpec
    from h2s_dist.specs.training import SpatialSpec
    from h2s_dist.specs.training import TemporalFlowsSpec
    from h2s_dist.specs.driver import TVL1FlowsSpec

    out, seconds = {}, {}

    def stage(name, kind, spec_cls, **spec):
        seed_everything(args.seed)
        start = time.perf_counter()
        out[name] = launch(kind, spec_cls.model_validate(spec), str(work / name))
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"  {name:16s} {seconds[name]:6.1f} s", flush=True)

    start = time.perf_counter()
    dataset = str(work / "data")
    config = SyntheticMotionConfig(num_videos=args.num_videos, num_frames=args.num_frames, height=args.height,
                                   width=args.width, seed=args.seed, shared_scenes=args.scenes == "shared",
                                   classes=args.classes)
    ingest(synthetic_entries(config), dataset, size=None, num_tasks=0, progress=False)
    seconds["ingest"] = round(time.perf_counter() - start, 1)
    print(f"  {'ingest':16s} {seconds['ingest']:6.1f} s", flush=True)

    # Adam, not the release's SGD: the tiny networks get a few hundred steps, not 16k.
    classifier_optim = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "bias_lr_multiplier": 1.0, "milestones": []}
    # Smoothness 0.1 as in jobs/quickstart.yaml (why: see there).
    unsup = {"smoothness_weight": 0.1}
    stage("pretrain", "pretrain_motionnet", PretrainSpec, motionnet=TINY, loss=unsup, data=_clips(dataset, args),
          optim={"name": "adam", "lr": 1e-3, "weight_decay": 4e-4, "milestones": []},
          loop=_loop(args.pretrain_steps, args.seed))
    for letter, mode in MODES.items():
        stage(f"finetune_{letter}", "finetune_stacked", FinetuneSpec, mode=mode, motionnet=TINY,
              motionnet_weights=out["pretrain"]["motionnet"], motionnet_lr=args.motionnet_lr, loss=unsup,
              vgg_flavour="tiny",
              data=_clips(dataset, args), optim=classifier_optim, loop=_loop(args.finetune_steps, args.seed))
    # The spatial stream's best answer here is the scene type (scene_x_motion) or the class
    # prior (motion). With --scenes per-video it can still memorise each training scene's motion
    # and is confidently wrong on test scenes, which drags the fusion down: give it
    # --spatial-label-smoothing 0.2 there. Shared scenes leave nothing to memorise (the paper's
    # 0 is enough).
    stage("spatial", "train_spatial", SpatialSpec, vgg_flavour="tiny", label_smoothing=args.spatial_label_smoothing,
          data=_clips(dataset, args, clip_len_frames=1, batch_size=16), optim=classifier_optim,
          loop=_loop(args.spatial_steps, args.seed))
    stage("tvl1", "tvl1_flows", TVL1FlowsSpec, dataset=dataset, subset=None, videos_per_shard=32, num_tasks=0,
          tvl1={"num_scales": 3, "num_warps": 3})
    stage("temporal_tvl1", "train_temporal_flows", TemporalFlowsSpec, flows=out["tvl1"]["flows"], vgg_flavour="tiny",
          data=_clips("", args, batch_size=8), optim=classifier_optim, loop=_loop(args.temporal_steps, args.seed))
    # Table 2: a 2-frame MotionNet's flows cached like TV-L1's, a temporal stream trained on them.
    stage("pretrain_2f", "pretrain_motionnet", PretrainSpec, motionnet=TINY, loss=unsup,
          data=_clips(dataset, args, clip_len_frames=2),
          optim={"name": "adam", "lr": 1e-3, "weight_decay": 4e-4, "milestones": []},
          loop=_loop(args.pretrain_steps, args.seed))
    stage("motionnet_flows", "tvl1_flows", TVL1FlowsSpec, dataset=dataset, subset=None, videos_per_shard=32,
          num_tasks=0, source="motionnet", motionnet=TINY, motionnet_weights=out["pretrain_2f"]["motionnet"],
          motionnet_frames=2)
    stage("temporal_motionnet", "train_temporal_flows", TemporalFlowsSpec, flows=out["motionnet_flows"]["flows"],
          vgg_flavour="tiny", data=_clips("", args, batch_size=8), optim=classifier_optim,
          loop=_loop(args.temporal_steps, args.seed))
    # Table 4: MotionNet pretrained with the cached TV-L1 flow as a proxy, then the stacked stream (c).
    stage("pretrain_proxy", "pretrain_motionnet", PretrainSpec, motionnet=TINY,
          loss={**unsup, "proxy_weight": args.proxy_weight}, proxy_flows=out["tvl1"]["flows"],
          data=_clips(dataset, args), optim={"name": "adam", "lr": 1e-3, "weight_decay": 4e-4, "milestones": []},
          loop=_loop(args.pretrain_steps, args.seed))
    stage("finetune_proxy", "finetune_stacked", FinetuneSpec, mode="action_plus_unsup", motionnet=TINY,
          motionnet_weights=out["pretrain_proxy"]["motionnet"], motionnet_lr=args.motionnet_lr, loss=unsup,
          vgg_flavour="tiny", data=_clips(dataset, args), optim=classifier_optim,
          loop=_loop(args.finetune_steps, args.seed))
    for letter in MODES:
        stage(f"evaluate_{letter}", "evaluate", EvaluateSpec, dataset=dataset, crop_size=args.crop,
              num_windows=args.num_windows, num_crops=5, motionnet=TINY, vgg_flavour="tiny", loader_workers=0,
              spatial_weights=out["spatial"]["spatial"], stacked_weights=out[f"finetune_{letter}"]["stacked_temporal"],
              # TV-L1 streams do not depend on the mode: score them once, with (a).
              tvl1_weights=out["temporal_tvl1"]["tvl1_temporal"] if letter == "a" else None,
              tvl1_flows=out["tvl1"]["flows"] if letter == "a" else None)
    # The two extra rows in one pass over the test videos: the MotionNet-cached stream scores
    # through the cached-flow slot (`tvl1_*`), the proxy-guided stacked stream through `stacked_*`.
    stage("evaluate_extra", "evaluate", EvaluateSpec, dataset=dataset, crop_size=args.crop,
          num_windows=args.num_windows, num_crops=5, motionnet=TINY, vgg_flavour="tiny", loader_workers=0,
          stacked_weights=out["finetune_proxy"]["stacked_temporal"],
          tvl1_weights=out["temporal_motionnet"]["tvl1_temporal"], tvl1_flows=out["motionnet_flows"]["flows"],
          tvl1_timed_videos=0)
    return {"outputs": out, "seconds": seconds}


def table_from(outputs: dict, args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """({row: top-1 %}, {row: protocol fps}, {stream: mean max softmax}) from the evaluate reports."""
    import json

    from h2s_dist.data import storage

    accuracy, fps, confidence = {}, {}, {}
    tvl1_ms_per_pair = outputs["tvl1"]["tvl1_ms_per_pair"]
    starts = eval_window_starts(args.num_frames, 11, args.num_windows)
    pairs_per_video = len({i for s in starts for i in range(s, s + 10)})
    for letter in MODES:
        report = json.loads(storage.read_bytes(outputs[f"evaluate_{letter}"]["report"]))
        m, sec = report["metrics"], report["seconds"]
        frames = m["eval/videos"] * args.num_windows * 10
        accuracy[f"stacked_{letter}"] = 100 * m["accuracy/stacked/top1"]
        accuracy[f"hidden_two_stream_{letter}"] = 100 * m["accuracy/hidden_two_stream/top1"]
        fps[f"stacked_{letter}"] = frames / (sec["decode"] + sec["stacked"])
        fps[f"hidden_two_stream_{letter}"] = frames / (sec["decode"] + sec["spatial"] + sec["stacked"])
        confidence[f"stacked_{letter}"] = m.get("confidence/stacked")
        if letter == "a":
            confidence["spatial"], confidence["tvl1_two_stage"] = m.get("confidence/spatial"), m.get("confidence/tvl1")
            accuracy["spatial"] = 100 * m["accuracy/spatial/top1"]
            fps["spatial"] = frames / (sec["decode"] + sec["spatial"])
            accuracy["tvl1_two_stage"] = 100 * m["accuracy/tvl1/top1"]
            accuracy["two_stream_tvl1"] = 100 * m["accuracy/two_stream_tvl1/top1"]
            flow_s = m["eval/videos"] * pairs_per_video * tvl1_ms_per_pair / 1e3
            fps["tvl1_two_stage"] = frames / (sec["tvl1"] + flow_s)
            fps["two_stream_tvl1"] = frames / (sec["tvl1"] + flow_s + sec["decode"] + sec["spatial"])
    extra = json.loads(storage.read_bytes(outputs["evaluate_extra"]["report"]))
    m, sec = extra["metrics"], extra["seconds"]
    frames = m["eval/videos"] * args.num_windows * 10
    accuracy["stacked_c_proxy"] = 100 * m["accuracy/stacked/top1"]
    fps["stacked_c_proxy"] = frames / (sec["decode"] + sec["stacked"])
    confidence["stacked_c_proxy"] = m.get("confidence/stacked")
    accuracy["motionnet_cached"] = 100 * m["accuracy/tvl1/top1"]
    flow_s = m["eval/videos"] * pairs_per_video * outputs["motionnet_flows"]["flow_ms_per_pair"] / 1e3
    fps["motionnet_cached"] = frames / (sec["tvl1"] + flow_s)
    confidence["motionnet_cached"] = m.get("confidence/tvl1")
    return accuracy, fps, confidence


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="108 videos of 80x64, 500 pretrain / 400 finetune steps")
    p.add_argument("--num-videos", type=int, default=None, help="default 180 (--quick 108); 1/4 are test")
    p.add_argument("--num-frames", type=int, default=24)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=80)
    p.add_argument("--crop", type=int, default=64, help="crop side, a multiple of 32")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default 1000 (--quick 500)")
    p.add_argument("--finetune-steps", type=int, default=None, help="default 800 (--quick 400)")
    p.add_argument("--spatial-steps", type=int, default=None, help="default 300 (--quick 200: fewer leave the scene types half learnt)")
    p.add_argument("--temporal-steps", type=int, default=None, help="default 600 (--quick 200)")
    p.add_argument("--num-windows", type=int, default=None, help="test windows per video (default 25; --quick 5)")
    p.add_argument("--motionnet-lr", type=float, default=1e-5,
                   help="MotionNet's Adam learning rate in modes (b) and (c) (the VGG16's is 1e-3)")
    p.add_argument("--proxy-weight", type=float, default=0.1,
                   help="loss.proxy_weight of the proxy-guided MotionNet (Table 4): EPE against the cached TV-L1 flow")
    p.add_argument("--spatial-label-smoothing", type=float, default=0.0,
                   help="label smoothing of the spatial stream (default 0, the paper; 0.2 tames it with "
                        "--scenes per-video, see run_stages)")
    p.add_argument("--classes", choices=("scene_x_motion", "motion"), default="scene_x_motion",
                   help="scene_x_motion: 3 scene types x 3 camera motions, only fusion tells both; motion: 9 "
                        "camera motions that look alike, so the spatial stream sits at chance")
    p.add_argument("--scenes", choices=("shared", "per-video"), default="shared",
                   help="shared: the videos of a round that may look alike (all 9 for --classes motion, the 3 of "
                        "a scene type for scene_x_motion) film one scene, so no frame, not even a training one, "
                        "ties a look to a motion; per-video: every video has its own scene (a spatial stream "
                        "then memorises its training scenes and is confidently wrong on test ones)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="run the whole benchmark once per seed and report means (e.g. --seeds 0 1 2)")
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="keep every stage's outputs under DIR/seed_N (weights, evaluate's scores.npz to "
                        "study errors or re-fuse); default: a temporary folder")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenCV threads (1: on a shared machine more threads oversubscribe the cores)")
    args = p.parse_args(argv)
    q = args.quick
    args.num_videos = args.num_videos or (108 if q else 180)
    args.pretrain_steps = args.pretrain_steps or (500 if q else 1000)
    args.finetune_steps = args.finetune_steps or (400 if q else 800)
    args.spatial_steps = args.spatial_steps or (200 if q else 300)
    args.temporal_steps = args.temporal_steps or (200 if q else 600)
    args.num_windows = args.num_windows or (5 if q else 25)
    if args.crop % 32 or args.crop > min(args.height, args.width):
        p.error(f"--crop must be a multiple of 32 and fit the {args.width}x{args.height} frames, got {args.crop}")
    return args


FUSIONS = {"hidden_two_stream_a": "stacked_a", "hidden_two_stream_b": "stacked_b",
           "hidden_two_stream_c": "stacked_c", "two_stream_tvl1": "tvl1_two_stage"}


def summarise(per_seed: dict[int, dict], num_test: int) -> dict:
    """Mean and sample standard deviation over seeds of each row's top-1, fps and confidence, and
    per fusion its gain over its own temporal stream in test videos (paired: same seed, same
    test videos), the figure that says whether fusing hurts."""
    seeds = list(per_seed)

    def mean(key, row):
        values = [per_seed[s][key].get(row) for s in seeds]
        return None if None in values else float(np.mean(values))

    accuracy = {row: mean("accuracy", row) for row in ROWS}
    sd = {row: float(np.std([per_seed[s]["accuracy"][row] for s in seeds], ddof=1)) if len(seeds) > 1 else None
          for row in ROWS}
    gain = {}
    for fused, temporal in FUSIONS.items():
        videos = [round((per_seed[s]["accuracy"][fused] - per_seed[s]["accuracy"][temporal]) * num_test / 100)
                  for s in seeds]
        gain[fused] = {"temporal": temporal, "videos_per_seed": videos, "mean_videos": float(np.mean(videos))}
    return {"accuracy": accuracy, "accuracy_sd": sd, "fps": {row: mean("fps", row) for row in ROWS},
            "confidence": {row: mean("confidence", row) for row in per_seed[seeds[0]]["confidence"]},
            "fusion_gain": gain}


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    started = time.perf_counter()
    print(f"synthetic benchmark: {args.num_videos} videos x {args.num_frames} frames {args.width}x{args.height}, "
          f"{args.classes} classes, {args.scenes} scenes, crop {args.crop}; steps pretrain {args.pretrain_steps}, finetune "
          f"{args.finetune_steps} x3, spatial {args.spatial_steps}, temporal TV-L1 {args.temporal_steps}; "
          f"{args.num_windows} windows x 5 crops; seeds {args.seeds}", flush=True)
    per_seed = {}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
        with contextlib.ExitStack() as stack:
            work = (pathlib.Path(args.keep) / f"seed_{seed}" if args.keep
                    else pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory())))
            result = run_stages(work, seed_args)
            accuracy, fps, confidence = table_from(result["outputs"], seed_args)
        per_seed[seed] = {"accuracy": accuracy, "fps": fps, "confidence": confidence,
                          "stage_seconds": result["seconds"]}
    num_test = args.num_videos - sum(1 for i in range(args.num_videos) if (i // 9) % 4 != 3)
    summary = summarise(per_seed, num_test)
    accuracy, sd = summary["accuracy"], summary["accuracy_sd"]
    print()
    print(format_table(["method", "top-1 % (synthetic)", "sd over seeds", "fps (this CPU)",
                        "paper top-1 % (UCF101 s1)", "paper fps (Titan X)"],
                       [[LABELS[r], accuracy[r], sd[r], summary["fps"][r], PAPER_TABLE2[r]["accuracy"],
                         PAPER_TABLE2[r]["fps"]] for r in ROWS]))
    print(f"\n{num_test} test videos (one video = {100 / max(num_test, 1):.1f} points); chance = {100 / 9:.1f} %; "
          f"mean of {len(args.seeds)} seed(s)")
    print("fusion minus its temporal stream, test videos per seed: " + "; ".join(
        f"{LABELS[f]} {g['videos_per_seed']} (mean {g['mean_videos']:+.2f})" for f, g in summary["fusion_gain"].items()))
    print("mean confidence (max softmax; 1/9 = knows it knows nothing): "
          + ", ".join(f"{k} {v:.2f}" for k, v in summary["confidence"].items() if v is not None))
    payload = {
        **summary, "per_seed": per_seed, "paper": PAPER_TABLE2, "labels": LABELS,
        "num_test_videos": num_test, "chance_percent": 100 / 9,
        "total_seconds": round(time.perf_counter() - started, 1),
        "settings": {**vars(args), "num_crops": 5},
        "notes": (("tiny networks on the synthetic set of 9 classes = 3 scene types x 3 camera motions: by design "
                   "the spatial stream can tell only the scene, the temporal streams only the motion, their fusion both"
                   if args.classes == "scene_x_motion" else
                   "tiny networks on the synthetic motion set (9 camera-motion classes); the spatial stream cannot "
                   "tell the classes apart by design") + ". fps: protocol frames/s on this CPU, 10 frames per window. "
                  "accuracy and fps are means over the seeds in per_seed."),
    }
    path = write_results("accuracy", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
