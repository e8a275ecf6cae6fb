"""Sizes and speeds of the networks: parameters, forward and forward+backward ms per clip.

For each flavour (paper, tiny) it times MotionNet (11-frame clips), the stacked temporal
stream (MotionNet -> FlowNormalize -> 20-channel VGG16, mode action_plus_unsup so the
backward reaches both) and the spatial VGG16 (one RGB frame per clip), on CPU in fp32 and
bf16 autocast, and on CUDA (bf16 autocast, channels_last) when available. Each figure is
the median of --repeats runs after --warmup runs, divided by the batch size.

    python bench/models.py --quick              # ~1-2 min on 2 cores, 128x128 crops
    python bench/models.py --flavour paper --size 224 --repeats 5

Writes the table as JSON to bench/results/models.json (with machine info and command line).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
from contextlib import nullcontext

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import median_seconds  # noqa: E402

from h2s_dist.models import StackedTemporalStream, build_motionnet, build_vgg16

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "models.json"
NUM_FRAMES = 11
NUM_CLASSES = 101


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (~2 min on 2 cores)")
    p.add_argument("--flavour", choices=("paper", "tiny", "both"), default="both")
    p.add_argument("--size", type=int, default=None, help="square crop side, a multiple of 32 (default 224; --quick: 128)")
    p.add_argument("--batch", type=int, default=1, help="clips per step")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; --quick: 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-bf16-cpu", action="store_true", help="skip the CPU bf16 autocast rows")
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = p.parse_args(argv)
    args.size = args.size or (128 if args.quick else 224)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.size % 32:
        p.error(f"--size must be a multiple of 32 (MotionNet), got {args.size}")
    return args


def _models(flavour: str) -> dict[str, torch.nn.Module]:
    """The three timed models; the stacked stream shares the MotionNet instance."""
    motionnet = build_motionnet(flavour, num_frames=NUM_FRAMES)
    temporal = build_vgg16(flavour, in_channels=2 * (NUM_FRAMES - 1), num_classes=NUM_CLASSES)
    return {
        "motionnet": motionnet,
        "stacked": StackedTemporalStream(motionnet, temporal, "action_plus_unsup"),
        "spatial_vgg16": build_vgg16(flavour, in_channels=3, num_classes=NUM_CLASSES),
    }


def _input(name: str, batch: int, size: int, device: torch.device) -> torch.Tensor:
    if name == "spatial_vgg16":
        return torch.randn(batch, 3, size, size, device=device)
    return torch.randn(batch, NUM_FRAMES, 3, size, size, device=device)


def _scalar(out) -> torch.Tensor:
    """A scalar to backpropagate from any of the models' outputs."""
    if isinstance(out, list):
        return sum(f.float().mean() for f in out)
    scores = out.scores if hasattr(out, "scores") else out
    return scores.float().sum()


def _bench_one(model, x, precision: str, device: torch.device, args) -> tuple[float, float]:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext())

    def forward():
        with torch.inference_mode(), autocast:
            model(x)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = _scalar(model(x))
        loss.backward()

    model.eval()
    fwd = 1e3 * median_seconds(forward, args.warmup, args.repeats, sync)
    model.train()
    fwd_bwd = 1e3 * median_seconds(forward_backward, args.warmup, args.repeats, sync)
    return fwd / args.batch, fwd_bwd / args.batch


def _targets() -> list[tuple[torch.device, str, bool]]:
    """(device, precision, channels_last) combinations to time."""
    return [(torch.device("cpu"), "fp32", False), (torch.device("cpu"), "bf16", False)] + (
        [(torch.device("cuda"), "bf16", True)] if torch.cuda.is_available() else []
    )


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    flavours = ("paper", "tiny") if args.flavour == "both" else (args.flavour,)
    for flavour in flavours:
        torch.manual_seed(0)
        models = _models(flavour)
        for device, precision, channels_last in _targets():
            if device.type == "cpu" and precision == "bf16" and args.no_bf16_cpu:
                continue
            for name, model in models.items():
                model.to(device)
                if channels_last:
                    model.to(memory_format=torch.channels_last)
                x = _input(name, args.batch, args.size, device)
                fwd, fwd_bwd = _bench_one(model, x, precision, device, args)
                row = dict(flavour=flavour, model=name, device=device.type, precision=precision,
                           channels_last=channels_last, size=args.size, batch=args.batch,
                           params=sum(p.numel() for p in model.parameters()),
                           forward_ms=round(fwd, 2), forward_backward_ms=round(fwd_bwd, 2))
                rows.append(row)
                print(_format_row(row), flush=True)
            for model in models.values():
                model.to("cpu")
        del models
    return rows


_HEADER = f"{'flavour':7} {'model':14} {'device':6} {'prec':5} {'params':>12} {'fwd ms':>10} {'fwd+bwd ms':>11}"


def _format_row(r: dict) -> str:
    return (f"{r['flavour']:7} {r['model']:14} {r['device']:6} {r['precision']:5} "
            f"{r['params']:>12,} {r['forward_ms']:>10.1f} {r['forward_backward_ms']:>11.1f}")


def _machine() -> dict:
    info = dict(cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), platform=platform.platform(), processor=platform.processor())
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
    else:
        info["device_name"] = "cpu"
    return info


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"size {args.size}x{args.size}, batch {args.batch}, {NUM_FRAMES}-frame clips "
          f"(spatial: 1 RGB frame per clip), median of {args.repeats} after {args.warmup} warm-up; ms per clip")
    print(_HEADER)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(command=" ".join([sys.executable, *sys.argv]), machine=_machine(),
                   settings=dict(size=args.size, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
                                 num_frames=NUM_FRAMES, num_classes=NUM_CLASSES),
                   results=rows)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
