"""Shared helpers of the bench/ scripts: machine description, JSON results, tables, timing.

Every script writes `bench/results/<name>.json` through `write_results`, which adds the
machine (cpu count, CPU model from /proc/cpuinfo, torch version, CUDA device if any) and
the exact command line, so a figure can always be traced to where and how it was measured.
"""

from __future__ import annotations

import json
import statistics
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"

# The paper's Table 2 (UCF101 split 1; fps on a Titan X), from /work/shared/PAPER.md.
PAPER_TABLE2 = {
    "spatial": {"accuracy": 80.97, "fps": None},
    "tvl1_two_stage": {"accuracy": 85.65, "fps": 14.75},
    "stacked_a": {"accuracy": 83.76, "fps": 169.49},
    "stacked_b": {"accuracy": 84.04, "fps": 169.49},
    "stacked_c": {"accuracy": 84.88, "fps": 169.49},
    "two_stream_tvl1": {"accuracy": 90.9, "fps": 12.8},
    "hidden_two_stream_a": {"accuracy": 87.50, "fps": 120.48},
    "hidden_two_stream_b": {"accuracy": 87.99, "fps": 120.48},
    "hidden_two_stream_c": {"accuracy": 89.82, "fps": 120.48},
    "motionnet_cached": {"accuracy": 84.09, "fps": 48.54},
    # Table 4's proxy-guided MotionNet: PAPER.md gives no figure for it.
    "stacked_c_proxy": {"accuracy": None, "fps": None},
}

# The paper's Table 3 (stacked temporal stream, UCF101 split 1), from /work/shared/PAPER.md.
PAPER_TABLE3 = {"all": 82.71, "no_small_disp": 82.22, "no_ssim": 81.58, "no_conv_between": 81.25,
                "no_smooth": 80.14, "none": 77.79}
# Table 4 (proxy-guided MotionNet): PAPER.md gives no figures; the rows compare with the
# unsupervised stacked (c) of Table 2 (84.88).
PAPER_TABLE4 = {"unsupervised": 84.88, "proxy_guided": None}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where a figure was measured: cores, CPU model, torch/opencv versions, CUDA device."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cuda_device=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except ImportError:
        info["torch"] = None
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    return info


def command_line() -> str:
    """The exact command that produced the results (interpreter + argv), shell-quoted."""
    return " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])


def _stamped(payload: dict[str, Any]) -> dict[str, Any]:
    """payload + the machine, the command and the time that produced it."""
    return {**payload, "machine": machine_info(), "command": command_line(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _write_atomically(name: str, content: dict[str, Any], out_dir: pathlib.Path) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(content, indent=1, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def write_results(name: str, payload: dict[str, Any], out_dir: pathlib.Path = RESULTS_DIR) -> pathlib.Path:
    """Write payload + machine + command to out_dir/<name>.json atomically; returns the path."""
    return _write_atomically(name, _stamped(payload), out_dir)


def merge_results(name: str, key: str, payload: dict[str, Any], out_dir: pathlib.Path = RESULTS_DIR) -> pathlib.Path:
    """Put payload + its own machine, command and time under `key` of out_dir/<name>.json,
    keeping the rest of the file (a part of a benchmark rerun alone); returns the path."""
    return _write_atomically(name, {**(read_results(name, out_dir) or {}), key: _stamped(payload)}, out_dir)


def read_results(name: str, out_dir: pathlib.Path = RESULTS_DIR) -> dict[str, Any] | None:
    path = out_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, pathlib.Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".2f") -> str:
    """A plain-text table, columns padded to their widest cell; None prints as '-'."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def timed(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 3, sync: Callable[[], None] = lambda: None
          ) -> tuple[float, Any]:
    """(median seconds of `repeats` calls after `warmup` calls, the last call's result)."""
    result = None
    for _ in range(warmup):
        result = fn()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], result


def median_seconds(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of `fn` after `warmup` calls; `sync` waits for queued GPU work."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def interleaved_median_seconds(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """{name: median wall time} of each fn, timed in rounds that call every fn once in turn.

    A ratio of two methods timed one after the other, minutes apart, takes in whatever the
    machine did in between: on this shared 2-core machine one run timed the int8 hidden two-stream
    at 73.9 fps and a later one at 36.7, with TV-L1 at 6.9 and 6.7. Timed in turn within each
    round, both sides of a ratio see the same machine."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: float(statistics.median(t)) for name, t in times.items()}
