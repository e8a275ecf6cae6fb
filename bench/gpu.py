"""GPU benchmark, one script for any machine with a GPU: pretraining speed and MFU, inference
fps, DDP scaling.

  train      one MotionNet pretraining step as the stage takes it (the paper's unsupervised
             loss, Adam) at --size with --batch clips per GPU, bf16 autocast, channels_last,
             torch.compile off and on: clips/s and the model FLOP utilisation, MFU = training
             FLOPs per clip (torch's FlopCounterMode over one forward + backward: convolutions
             and matmuls) x clips/s / the GPU's dense bf16 peak (PEAK_TFLOPS by device name,
             or --peak-tflops).
  inference  hidden two-stream (spatial VGG16 on the centre frame + stacked temporal stream,
             fused 1 : 1.5) and the stacked stream alone, bf16 and channels_last, batches of
             --infer-batch 11-frame windows at --size: fps counts 10 frames per window, as
             bench/speed.py and the paper's Table 2 do.
  ddp        with N >= 2 GPUs: the training step under DDP (NCCL; the project's dist.wrap_ddp)
             on 1 and N GPUs, per-GPU batch fixed (weak scaling), fp32 and bf16 gradient
             all-reduce: clips/s and efficiency = clips/s(N) / (N x clips/s(1)).

    python bench/gpu.py                        # paper networks at 224 (~5-10 min on one GPU)
    python bench/gpu.py --dry-run              # CPU, tiny networks at 32 px, 2 gloo ranks (tests)

Writes bench/results/gpu.json (--dry-run: --out, default a temporary file) with the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import PAPER_TABLE2, RESULTS_DIR, format_table, median_seconds, write_results  # noqa: E402
from h2s_dist import frames as frame_conv  # noqa: E402
from h2s_dist.losses import unsupervised_flow_loss  # noqa: E402
from h2s_dist.models import StackedTemporalStream, build_motionnet, build_vgg16, fuse_scores  # noqa: E402
from h2s_dist.specs.common import UnsupLossSpec  # noqa: E402
from h2s_dist.train.builders import unsup_loss_config  # noqa: E402

NUM_FRAMES = 11
FRAMES_PER_WINDOW = NUM_FRAMES - 1
NUM_CLASSES = 101
# Dense bf16 tensor-core peaks (TFLOPS, no sparsity) from the vendors' data sheets; the first
# name found in torch.cuda.get_device_name() wins (SXM parts; PCIe ones are lower: --peak-tflops).
PEAK_TFLOPS = {"B200": 2250.0, "H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10G": 70.0}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny networks, small sizes: checks the script")
    p.add_argument("--size", type=int, default=None, help="square crop (default 224; --dry-run 32)")
    p.add_argument("--batch", type=int, default=None, help="clips per GPU in a training step (default 16; dry 1)")
    p.add_argument("--infer-batch", type=int, default=None, help="windows per inference batch (default 25; dry 2)")
    p.add_argument("--flavour", choices=("paper", "small", "tiny"), default=None, help="default paper; dry tiny")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 10; dry 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; dry 1)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--gpus", type=int, default=None, help="N of the DDP part (default: every visible GPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    dry = args.dry_run
    args.size = args.size or (32 if dry else 224)
    args.batch = args.batch or (1 if dry else 16)
    args.infer_batch = args.infer_batch or (2 if dry else 25)
    args.flavour = args.flavour or ("tiny" if dry else "paper")
    args.repeats = args.repeats or (1 if dry else 10)
    args.warmup = args.warmup or (1 if dry else 3)
    if dry and not torch.cuda.is_available():
        args.no_compile = True  # inductor on 2 CPU cores takes minutes; bench/compile.py measures it
    if args.out is None:
        args.out = pathlib.Path(tempfile.mkdtemp(prefix="h2s-gpu-dry-")) if dry else RESULTS_DIR
    return args


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """The device's dense bf16 peak in FLOP/s, None when unknown (a CPU, an unlisted GPU)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


# ----------------------------------------------------------------------------- training step


class PretrainStep:
    """One pretraining step of MotionNet: forward, the stage's unsupervised loss, backward, Adam."""

    def __init__(self, flavour: str, size: int, batch: int, device: torch.device, compile_model: bool,
                 wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m, bf16: bool = True):
        torch.manual_seed(0)
        self.device, self.bf16 = device, bf16
        self.model = build_motionnet(flavour, num_frames=NUM_FRAMES).to(device).to(memory_format=torch.channels_last)
        self.trained = wrap(self.model)
        if compile_model:
            self.trained = torch.compile(self.trained)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3.2e-5)
        self.config = unsup_loss_config(UnsupLossSpec(), finetuning=False)
        self.clips = torch.rand(batch, NUM_FRAMES, 3, size, size, device=device) * 2 - 1

    def loss(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            flows = self.trained(self.clips)
        total, _ = unsupervised_flow_loss(frame_conv.denormalize(self.clips), flows, self.config)
        return total

    def __call__(self) -> None:
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def training_flops_per_clip(flavour: str, size: int, device: torch.device) -> float:
    """FLOPs of one clip's forward + backward (convolutions and matmuls, as MFU counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = PretrainStep(flavour, size, 1, device, compile_model=False)
    with FlopCounterMode(display=False) as counter:
        step.loss().backward()
    return float(counter.get_total_flops())


def train_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    flops = training_flops_per_clip(args.flavour, args.size, device)
    peak = peak_flops(device, args.peak_tflops)
    rows = []
    for compiled in (False,) if args.no_compile else (False, True):
        step = PretrainStep(args.flavour, args.size, args.batch, device, compiled)
        started = time.perf_counter()
        step()  # the first step compiles (with torch.compile): timed apart
        _sync(device)()
        first_s = time.perf_counter() - started
        seconds = median_seconds(step, args.warmup, args.repeats, _sync(device))
        clips_per_s = args.batch / seconds
        rows.append({"compile": compiled, "precision": "bf16", "channels_last": True, "batch": args.batch,
                     "size": args.size, "ms_per_step": 1e3 * seconds, "clips_per_s": clips_per_s,
                     "first_step_s": first_s, "train_gflop_per_clip": flops / 1e9,
                     "achieved_tflops": flops * clips_per_s / 1e12,
                     "mfu": flops * clips_per_s / peak if peak else None})
        del step
    return rows


# ----------------------------------------------------------------------------- inference


def inference_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    motionnet = build_motionnet(args.flavour, num_frames=NUM_FRAMES)
    vgg_flavour = "tiny" if args.flavour == "tiny" else "paper"
    temporal = build_vgg16(vgg_flavour, in_channels=2 * FRAMES_PER_WINDOW, num_classes=NUM_CLASSES)
    stacked = StackedTemporalStream(motionnet, temporal, "action_plus_unsup").to(device).eval()
    spatial = build_vgg16(vgg_flavour, in_channels=3, num_classes=NUM_CLASSES).to(device).eval()
    stacked, spatial = (m.to(memory_format=torch.channels_last) for m in (stacked, spatial))
    windows = torch.rand(args.infer_batch, NUM_FRAMES, 3, args.size, args.size, device=device) * 2 - 1
    centre = windows[:, NUM_FRAMES // 2].contiguous(memory_format=torch.channels_last)

    def run(method: str) -> Callable[[], None]:
        def forward() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                temporal_scores = stacked(windows).scores
                if method == "hidden_two_stream":
                    fuse_scores(spatial(centre).float(), temporal_scores.float())
        return forward

    rows = []
    for method, paper in (("hidden_two_stream", "hidden_two_stream_c"), ("stacked_temporal", "stacked_c")):
        seconds = median_seconds(run(method), args.warmup, args.repeats, _sync(device))
        windows_per_s = args.infer_batch / seconds
        rows.append({"method": method, "size": args.size, "batch_windows": args.infer_batch,
                     "windows_per_s": windows_per_s, "fps": windows_per_s * FRAMES_PER_WINDOW,
                     "paper_fps_titan_x": PAPER_TABLE2[paper]["fps"]})
    return rows


# ----------------------------------------------------------------------------- DDP scaling


def _ddp_worker(rank: int, world_size: int, args: argparse.Namespace, bf16_grads: bool, port: int,
                out: str) -> None:
    import torch.distributed as torch_dist

    from h2s_dist.train import dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    torch_dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                  rank=rank, world_size=world_size)
    try:
        device = torch.device("cuda", rank) if cuda else torch.device("cpu")
        step = PretrainStep(args.flavour, args.size, args.batch, device, compile_model=False,
                            wrap=lambda m: dist.wrap_ddp(m, device, bf16_grads=bf16_grads))
        seconds = median_seconds(step, args.warmup, args.repeats, _sync(device))
        if rank == 0:
            pathlib.Path(out).write_text(str(seconds))
    finally:
        torch_dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_step_seconds(world_size: int, args: argparse.Namespace, bf16_grads: bool) -> float:
    import torch.multiprocessing as torch_mp

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "seconds")
        # spawn with CUDA (a forked child cannot use CUDA); fork on CPU (no torch re-import)
        method = "spawn" if torch.cuda.is_available() else "fork"
        torch_mp.start_processes(_ddp_worker, args=(world_size, args, bf16_grads, _free_port(), out),
                                 nprocs=world_size, join=True, start_method=method)
        return float(pathlib.Path(out).read_text())


def ddp_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    n = args.gpus or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    if n < 2:
        return []
    rows = []
    for bf16_grads in (False, True):
        one = args.batch / ddp_step_seconds(1, args, bf16_grads)
        many = n * args.batch / ddp_step_seconds(n, args, bf16_grads)
        rows.append({"grad_allreduce": "bf16" if bf16_grads else "fp32", "workers": n, "batch_per_worker": args.batch,
                     "clips_per_s_1": one, "clips_per_s_n": many, "efficiency": many / (n * one)})
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    device = _device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes, as dist.pick_device sets it
    elif not args.dry_run:
        raise SystemExit("bench/gpu.py needs a CUDA device (or --dry-run on CPU)")
    results: dict[str, Any] = {"device": str(device), "flavour": args.flavour, "dry_run": args.dry_run,
                               "peak_tflops": (peak_flops(device, args.peak_tflops) or 0) / 1e12 or None}
    results["train"] = train_rows(args, device)
    print(format_table(["compile", "batch", "size", "ms/step", "clips/s", "first step s", "GFLOP/clip", "TFLOPS", "MFU"],
                       [[r["compile"], r["batch"], r["size"], r["ms_per_step"], r["clips_per_s"], r["first_step_s"],
                         r["train_gflop_per_clip"], r["achieved_tflops"], r["mfu"]] for r in results["train"]]))
    results["inference"] = inference_rows(args, device)
    print(format_table(["method", "size", "windows/batch", "windows/s", "fps", "paper fps (Titan X)"],
                       [[r["method"], r["size"], r["batch_windows"], r["windows_per_s"], r["fps"], r["paper_fps_titan_x"]]
                        for r in results["inference"]]))
    results["ddp"] = ddp_rows(args)
    if results["ddp"]:
        print(format_table(["all-reduce", "workers", "batch/worker", "clips/s 1", "clips/s N", "efficiency"],
                           [[r["grad_allreduce"], r["workers"], r["batch_per_worker"], r["clips_per_s_1"],
                             r["clips_per_s_n"], r["efficiency"]] for r in results["ddp"]]))
    path = write_results("gpu", results, out_dir=args.out)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
