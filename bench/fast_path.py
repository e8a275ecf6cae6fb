"""bench/speed.py's fast-path section: h2s_dist.inference against TV-L1 two-stage, and its accuracy guard.

For each --fast-sizes side, in the same run and on the same synthetic windows:
  tvl1_two_stage       OpenCV Dual TV-L1 at its fastest threading (speed.choose_flow_engine) ->
                       quantised stacks -> flow VGG16, plus the spatial VGG16, release fusion
  h2s <config>         HiddenTwoStream (paper nets, random weights) scoring --video-windows windows
                       in one forward under each inference.FastConfig, and the torch.export program
and the ratio of each to tvl1_two_stage (issue 17's goal: >= 12x), every method timed in turn within
each round (`interleaved_median_seconds`) so that a ratio compares the same minutes of the machine.
int8 variants are calibrated on other synthetic windows here, and on the job's training videos for
the agreement.

Speed does not depend on the weights but agreement does: `stage_agreement` loads a finished
job's trained hidden two-stream (--agreement-model, default the quickstart job) and counts, over
its dataset's test videos under its evaluate protocol, the share whose fused top-1 class is the
same under each variant as under fp32. A variant below inference.MIN_AGREEMENT is marked rejected.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import numpy as np
import torch

from bench._common import interleaved_median_seconds
from h2s_dist.inference import (CALIBRATION_VIDEOS, HiddenTwoStream, MIN_AGREEMENT, build_fast, calibration_clips,
                                export_program, fast_configs)
from h2s_dist.config import JOBS_ROOT
from h2s_dist.models import build_vgg16
from h2s_dist.specs.common import MotionNetSpec
from h2s_dist.train.builders import build_stacked

EXPORTED = "torch.export"


def random_hidden_two_stream(flavour: str, num_classes: int, num_frames: int = 11) -> HiddenTwoStream:
    """Both streams as the evaluate stage builds them (train/builders.py), random weights."""
    torch.manual_seed(0)
    stacked = build_stacked(MotionNetSpec(flavour=flavour), num_frames, flavour, num_classes)
    return HiddenTwoStream(build_vgg16(flavour, 3, num_classes), stacked).eval()


def variants(model: HiddenTwoStream, example: torch.Tensor, calibration: torch.Tensor, bf16: bool | None = None
             ) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """{name: clips -> fused scores}: every FastConfig here (int8 ones calibrated on `calibration`),
    then the exported program (fp32)."""
    out = {config.name: build_fast(model, config, calibration) for config in fast_configs(bf16)}
    try:
        program = export_program(model, example).module()

        def exported(clips: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return program(clips)

        out[EXPORTED] = exported
    except Exception as err:  # reported, not fatal: eager variants still measure
        print(f"  torch.export failed: {type(err).__name__}: {err}"[:300], flush=True)
    return out


def measure_size(size: int, tvl1_two_stage: Callable[[np.ndarray], torch.Tensor], windows_of: Callable,
                 args: argparse.Namespace) -> list[dict]:
    """Rows {size, method, fps, ratio_vs_tvl1} of TV-L1 two-stage and every hidden two-stream variant."""
    def clips_of(seed: int) -> torch.Tensor:
        return torch.from_numpy(windows_of(args.video_windows, size, seed)).permute(0, 1, 4, 2, 3).contiguous()

    flow_windows, clips = windows_of(args.batch, size), clips_of(0)
    model = random_hidden_two_stream(args.flavour, 101)
    windows = {"tvl1_two_stage": args.batch}
    calls = {"tvl1_two_stage": lambda: tvl1_two_stage(flow_windows)}
    for name, fn in variants(model, clips[:2], calibration=clips_of(1)).items():  # calibrated on other windows
        windows[f"h2s {name}"], calls[f"h2s {name}"] = args.video_windows, (lambda fn=fn: fn(clips))
    seconds = interleaved_median_seconds(calls, args.warmup, args.repeats)
    fps = {name: windows[name] * 10 / s for name, s in seconds.items()}
    rows = []
    for name in calls:
        rows.append({"size": size, "method": name, "windows": windows[name], "fps": fps[name],
                     "ratio_vs_tvl1": fps[name] / fps["tvl1_two_stage"]})
        print(f"  {size:4d} px  {name:36s} {fps[name]:8.2f} fps  {rows[-1]['ratio_vs_tvl1']:6.2f}x", flush=True)
    return rows


def stage_agreement(model_uri: str, max_videos: int | None = None) -> dict:
    """{variant: top-1 agreement with fp32} of a finished job's trained hidden two-stream over its
    dataset's test videos (evaluate protocol), plus the video count and the stage used."""
    from h2s_dist.data import storage
    from h2s_dist.inference import hidden_two_stream, video_agreement
    from h2s_dist.predict import SPEC_FILE, _read_json, load_model
    from h2s_dist.specs.evaluate import EvaluateSpec
    from h2s_dist.train.streams import SOURCES, STREAMS

    loaded = load_model(model_uri, device="cpu")
    model = hidden_two_stream(loaded)  # refuses any stage but evaluate, so the spec is an EvaluateSpec
    spec = EvaluateSpec.model_validate(_read_json(storage.join(loaded.stage_uri, SPEC_FILE)))
    loader = SOURCES[STREAMS["stacked"].source].open(spec, 0, 1)  # the evaluate stage's own test inputs
    videos = [item.clips for i, item in zip(range(max_videos or 10**9), loader)]
    # int8 variants calibrate on training videos of the same dataset, never on the judged ones.
    calibration = calibration_clips(spec.dataset, spec.split, spec.clip_len_frames, spec.crop_size)
    fns = variants(model, videos[0][:2], calibration)
    reference = fns.pop("fp32")
    agreement = video_agreement(reference, fns, videos)
    return {"stage": loaded.stage_uri, "num_videos": len(videos), "calibration_videos": CALIBRATION_VIDEOS,
            "calibration_windows": len(calibration), "agreement": agreement,
            "min_agreement": MIN_AGREEMENT, "rejected": sorted(n for n, a in agreement.items() if a < MIN_AGREEMENT)}


def default_agreement_model() -> str | None:
    """The quickstart job's workspace when it has finished here (make demo / h2s run jobs/quickstart.yaml)."""
    for path in (os.path.join(JOBS_ROOT, "quickstart"), os.path.join(os.path.expanduser("~"), JOBS_ROOT, "quickstart")):
        if os.path.isdir(path):
            return path
    return None
