"""torch.compile on CPU: the MotionNet pretraining step (bench/gpu.py's PretrainStep: forward,
the stage's unsupervised loss, backward, Adam) eager against compiled, as `loop.compile`
compiles it (the model; the loss stays eager). ms per step (median after warm-up) and the
first compiled step's seconds (the compile itself), fp32 (no bf16 autocast: most CPUs lack it).

    .venv/bin/python bench/compile.py                      # tiny MotionNet, 64 px, batch 2 (2-7 min on 2 busy cores)
    .venv/bin/python bench/compile.py --flavour small --size 128

Writes bench/results/compile.json. On a GPU, bench/gpu.py measures compile on and off in bf16.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import format_table, median_seconds, write_results  # noqa: E402
from bench.gpu import PretrainStep  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flavour", choices=("paper", "small", "tiny"), default="tiny")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    device, rows = torch.device("cpu"), []
    for compiled in (False, True):
        step = PretrainStep(args.flavour, args.size, args.batch, device, compiled, bf16=False)
        started = time.perf_counter()
        step()
        first_s = time.perf_counter() - started
        seconds = median_seconds(step, args.warmup, args.repeats, lambda: None)
        rows.append({"compile": compiled, "flavour": args.flavour, "size": args.size, "batch": args.batch,
                     "ms_per_step": 1e3 * seconds, "clips_per_s": args.batch / seconds, "first_step_s": first_s})
    eager, compiled_row = rows
    speedup = eager["ms_per_step"] / compiled_row["ms_per_step"]
    print(format_table(["compile", "flavour", "size", "batch", "ms/step", "clips/s", "first step s"],
                       [[r["compile"], r["flavour"], r["size"], r["batch"], r["ms_per_step"], r["clips_per_s"],
                         r["first_step_s"]] for r in rows]))
    breakeven = (compiled_row["first_step_s"] - eager["first_step_s"]) / max(
        (eager["ms_per_step"] - compiled_row["ms_per_step"]) / 1e3, 1e-9)
    print(f"compiled / eager speed: {speedup:.2f}x; the compile pays off after ~{breakeven:.0f} steps"
          if speedup > 1 else f"compiled / eager speed: {speedup:.2f}x: no gain here")
    result = {"rows": rows, "speedup": speedup, "threads": torch.get_num_threads()}
    write_results("compile", result)
    return result


if __name__ == "__main__":
    main()
