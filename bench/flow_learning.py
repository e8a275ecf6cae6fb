"""Does MotionNet learn flow? Pretraining on the platform's own path, scored by `val/epe`.

Three measurements in one run, every method scored on the same pairs:
  1. baselines: TV-L1, Farneback and zero flow on the validation pairs (synthetic pairs with
     exact flow; the flow dev set, ../shared/data/flow_dev, resized to --max-side);
  2. ablation (paper Table 3, on flow instead of accuracy): a MotionNet pretrained on the
     synthetic motion set with all practices, without SSIM, without smoothness;
  3. real video: a MotionNet pretrained on the real clips of ../shared/data/videos
     (ingested as `h2s ingest videos` does, at the paper's 340x256), validated on the dev set
     as it trains. The dev set is frame pairs, so this MotionNet takes 2 frames (the paper's
     Table 2 "MotionNet (2 frames)" row; --real-frames 11 scores an 11-frame one on the pair
     with its second frame repeated, an input unlike any clip it trained on: such a network
     stayed at zero flow's error on the dev set).
Each pretraining is `pretrain_motionnet` run in this process (PretrainTask + fit, as the
launcher runs a stage with `scaling.num_workers: 0`), with the loss's per-term shares
recorded at the first and the last log step.

    .venv/bin/python bench/flow_learning.py --quick          # tiny nets, a few minutes on 2 cores
    .venv/bin/python bench/flow_learning.py                  # small flavour, ~30-45 min on 2 cores

Writes bench/results/flow_learning.json.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import format_table, write_results  # noqa: E402
from bench.flow_quality import farneback_method, tvl1_method, zero_flow  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
TERMS = ("loss/pixel", "loss/smooth", "loss/ssim")
ABLATION_LOSS = {"all_practices": {}, "without_ssim": {"ssim_weight_scale": 0.0},
                 "without_smoothness": {"smoothness_weight": 0.0}}


class RecordingTracker:
    """The tracker methods fit and run_training call; keeps every logged metric."""

    run_id = None

    def __init__(self) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics, step):
        self.history.append((step, dict(metrics)))

    def __getattr__(self, name):  # log_params, set_tags, log_image, log_dict, log_state_dict, ...
        return lambda *args, **kwargs: None


def term_shares(metrics: dict[str, float]) -> dict[str, float]:
    """Each weighted loss term's share of their sum (pixel + smooth + ssim = total)."""
    total = sum(metrics.get(t, 0.0) for t in TERMS) or 1.0
    return {t.split("/")[1]: round(metrics.get(t, 0.0) / total, 4) for t in TERMS}


def pretrain(spec_data: dict[str, Any], workdir: pathlib.Path) -> dict[str, Any]:
    """Run one pretraining in this process; its final val/epe, curve and loss shares."""
    from h2s_dist.specs.training import PretrainSpec
    from h2s_dist.train.launch import hash_of
    from h2s_dist.train.session import LocalSession
    from h2s_dist.train.stages.pretrain import PretrainTask
    from h2s_dist.train.task import run_training

    spec = PretrainSpec.model_validate(spec_data)
    tracker, started = RecordingTracker(), time.perf_counter()
    run_training(spec, PretrainTask(spec), LocalSession(str(workdir / "checkpoints"), hash_of(spec)), tracker,
                 str(workdir))
    logged = [m for _, m in tracker.history]
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "steps": spec.loop.max_steps,
        "val": {k: round(v, 4) for k, v in logged[-1].items() if k.startswith("val/")},
        "curve": [(step, round(m["val/epe"], 4)) for step, m in tracker.history if "val/epe" in m],
        "shares_first": term_shares(logged[0]),
        "shares_last": term_shares(logged[-1]),
    }


def baselines(sets: dict[str, list]) -> dict[str, dict[str, float]]:
    """{method: {set: EPE}} for TV-L1, Farneback and zero flow on exactly these pairs."""
    import numpy as np

    from h2s_dist.data.flow_io import average_epe

    methods = {"tvl1": tvl1_method, "farneback": farneback_method, "zero": zero_flow}
    return {name: {s: round(float(np.mean([average_epe(fn(p.frame1, p.frame2), p.flow, p.valid) for p in pairs])), 4)
                   for s, pairs in sets.items()} for name, fn in methods.items()}


def _data(dataset: str, crop: int, batch: int, frames: int = 11) -> dict[str, Any]:
    return {"dataset": dataset, "split": None, "subset": None, "clip_len_frames": frames, "crop_size": crop,
            "flip": False, "batch_size": batch, "loader_workers": 1, "shuffle_buffer": 16,
            "epoch_length_samples": 256}


def _spec(dataset: str, args, flavour: str, steps: int, crop: int, loss: dict, flow_dev: str | None,
          frames: int = 11) -> dict:
    return {
        "motionnet": {"flavour": flavour}, "data": _data(dataset, crop, args.batch, frames), "loss": loss,
        "optim": {"name": "adam", "lr": args.lr, "weight_decay": 0.0, "milestones": [int(0.7 * steps)], "gamma": 0.2},
        "loop": {"max_steps": steps, "log_every_steps": max(1, steps // 20), "picture_every_steps": 10 * steps,
                 "checkpoint_every_steps": steps},
        "validation": {"every_steps": max(1, steps // 5), "synthetic_pairs": args.synthetic_pairs,
                       "synthetic_size": [64, 64], "flow_dev": flow_dev, "max_side": args.max_side},
    }


def _ingest(listing, out: pathlib.Path, size) -> str:
    from h2s_dist.data.ingest import ingest

    report = ingest(listing, str(out), size=size, num_tasks=0, progress=False)
    print(f"  ingested {report.num_ok} videos ({report.num_skipped} skipped) into {out}", flush=True)
    return str(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny networks, few steps (minutes)")
    p.add_argument("--flow-dev", default=str(SHARED / "flow_dev"), help="flow dev set folder (default ../shared)")
    p.add_argument("--videos", default=str(SHARED / "videos"), help="folder of real clips (default ../shared)")
    p.add_argument("--flavour", default=None, help="MotionNet flavour of the real-video run (default small; tiny --quick)")
    p.add_argument("--real-steps", type=int, default=None, help="steps on real video (default 3000; 300 --quick)")
    p.add_argument("--ablation-steps", type=int, default=None, help="steps per ablation variant (default 800; 200 --quick)")
    p.add_argument("--real-frames", type=int, default=2,
                   help="frames of the real-video MotionNet (default 2: the dev set is pairs)")
    p.add_argument("--real-crop", type=int, default=128, help="training crop of the real-video run (340x256 frames)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-side", type=int, default=256, help="dev pairs resized to this longer side")
    p.add_argument("--synthetic-pairs", type=int, default=16)
    p.add_argument("--skip", action="append", default=[], choices=("ablation", "real"), help="leave a part out")
    args = p.parse_args(argv)
    flavour = args.flavour or ("tiny" if args.quick else "small")
    real_steps = args.real_steps or (300 if args.quick else 3000)
    ablation_steps = args.ablation_steps or (200 if args.quick else 800)
    flow_dev = args.flow_dev if pathlib.Path(args.flow_dev).is_dir() else None

    from h2s_dist.data.ingest import build_listing
    from h2s_dist.specs.training import PretrainSpec
    from h2s_dist.train.stages.pretrain import PretrainTask

    result: dict[str, Any] = {"settings": {"flavour_real": flavour, "real_steps": real_steps,
                                           "ablation_steps": ablation_steps, "batch": args.batch, "lr": args.lr,
                                           "real_frames": args.real_frames, "real_crop": args.real_crop,
                                           "max_side": args.max_side, "flow_dev": flow_dev}}
    with tempfile.TemporaryDirectory(prefix="h2s-flow-learning-") as tmp:
        work = pathlib.Path(tmp)
        synthetic = _ingest(build_listing("synthetic", synthetic={"num_videos": 64, "num_frames": 24, "height": 64,
                                                                   "width": 80}), work / "synthetic", None)
        # The validation pairs, built as pretraining builds them: every method scores these.
        sets = PretrainTask(PretrainSpec.model_validate(_spec(synthetic, args, "tiny", 10, 64, {}, flow_dev))
                            ).validation_sets()
        result["pairs"] = {name: len(pairs) for name, pairs in sets.items()}
        print("baselines on the validation pairs", flush=True)
        result["baselines"] = baselines(sets)
        if "ablation" not in args.skip:
            result["ablation"] = {}
            for name, loss in ABLATION_LOSS.items():
                print(f"ablation {name}: tiny MotionNet, {ablation_steps} steps on synthetic video", flush=True)
                result["ablation"][name] = pretrain(_spec(synthetic, args, "tiny", ablation_steps, 64, loss, flow_dev),
                                                    work / f"ablation-{name}")
        if "real" not in args.skip:
            real = _ingest(build_listing("videos", args.videos), work / "real", (340, 256))
            print(f"real video: {flavour} {args.real_frames}-frame MotionNet, {real_steps} steps", flush=True)
            result["real"] = pretrain(_spec(real, args, flavour, real_steps, args.real_crop, {}, flow_dev,
                                            args.real_frames), work / "pretrain-real")
    print_tables(result)
    write_results("flow_learning", result)
    return result


def print_tables(result: dict[str, Any]) -> None:
    sets = list(result["pairs"])
    rows = [[name, *[f"{epes[s]:.3f}" for s in sets]] for name, epes in result["baselines"].items()]
    for name, run in {**{f"motionnet {k}": v for k, v in result.get("ablation", {}).items()},
                      **({"motionnet real video": result["real"]} if "real" in result else {})}.items():
        rows.append([name, *[f"{run['val'].get(f'val/epe/{s}', float('nan')):.3f}" for s in sets]])
    print(format_table(["EPE px", *sets], rows))
    for name, run in {**result.get("ablation", {}), **({"real": result["real"]} if "real" in result else {})}.items():
        print(f"{name}: {run['steps']} steps in {run['seconds']} s; loss shares first {run['shares_first']} "
              f"last {run['shares_last']}; val/epe curve {run['curve']}")


if __name__ == "__main__":
    main()
