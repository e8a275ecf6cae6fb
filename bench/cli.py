"""How fast the `h2s` command answers: wall seconds of whole `python -m h2s_dist ...` processes.

Each command runs as a fresh subprocess of this interpreter with this checkout first on
PYTHONPATH (so the code timed is this tree's, whatever the venv's editable install points
at), --warmup times untimed, then --repeats times timed. Start-up is what is measured:
imports dominate, so a heavy import pulled in by accident shows up here first.

    h2s --help                                  target 1 s
    h2s validate jobs/ucf101_split1.yaml        target 2 s
    h2s runs --tracking-uri <temp sqlite store> target 3 s; the store is created here with
                                                --num-jobs job runs of 3 stage runs each
    h2s runs --tracking-uri URI                 the same target, for each --tracking-uri given

    .venv/bin/python bench/cli.py --quick        # ~1-2 min on 2 cores (~25 s of it creating the store)
    .venv/bin/python bench/cli.py --tracking-uri sqlite:///.h2s/mlflow.db --repeats 9

Prints a table (command, median, min, max, target, ok) and writes bench/results/cli.json.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import ROOT, format_table, write_results  # noqa: E402

HELP_TARGET_S = 1.0
VALIDATE_TARGET_S = 2.0
RUNS_TARGET_S = 3.0
STAGES = (("data", "ingest"), ("pretrain", "pretrain_motionnet"), ("evaluate", "evaluate"))


def build_store(folder: pathlib.Path, num_jobs: int) -> str:
    """A fresh MLflow sqlite store in `folder` with `num_jobs` job runs tagged as the runner
    tags them (a parent run per job, a child per stage, metrics on each); returns its URI."""
    from h2s_dist.tracking import MlflowTracker, resolve_tracking_uri

    uri = resolve_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    for index in range(num_jobs):
        job = f"bench_job_{index}"
        parent = MlflowTracker.start(uri, "h2s", run_name=job, tags={"h2s.run_type": "job", "h2s.job": job})
        for stage, kind in STAGES:
            tags = {"h2s.run_type": "stage", "h2s.job": job, "h2s.stage": stage, "h2s.stage_kind": kind,
                    "h2s.reused": "true" if index and stage == "data" else "false"}
            child = MlflowTracker.start(uri, "h2s", run_name=stage, parent_run_id=parent.run_id, tags=tags)
            child.log_metrics({"loss/total": 1.0 / (index + 1), "accuracy/stacked/top1": 0.25 * index}, step=10)
            child.close()
        parent.log_metrics({"job/seconds": 1.0}, step=0)
        parent.close()
    return uri


def cases(store_uri: str | None, extra_uris: Sequence[str]) -> list[dict[str, Any]]:
    """[{label, argv (after `python -m h2s_dist`), target_s}] in the order they are timed."""
    found = [
        {"label": "h2s --help", "argv": ["--help"], "target_s": HELP_TARGET_S},
        {"label": "h2s validate jobs/ucf101_split1.yaml", "argv": ["validate", "jobs/ucf101_split1.yaml"],
         "target_s": VALIDATE_TARGET_S},
    ]
    if store_uri:
        found.append({"label": "h2s runs (temp store)", "argv": ["runs", "--tracking-uri", store_uri],
                      "target_s": RUNS_TARGET_S})
    for uri in extra_uris:
        found.append({"label": f"h2s runs --tracking-uri {uri}", "argv": ["runs", "--tracking-uri", uri],
                      "target_s": RUNS_TARGET_S})
    return found


def child_env(root: pathlib.Path = ROOT) -> dict[str, str]:
    """`root` first on PYTHONPATH: the venv's editable install may point at another clone."""
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def time_command(argv: Sequence[str], warmup: int, repeats: int, root: pathlib.Path = ROOT) -> list[float]:
    """Wall seconds of `repeats` runs of `python -m h2s_dist ARGV` (after `warmup` untimed ones),
    run from checkout `root` with its code; a failing run raises with its stderr."""
    command = [sys.executable, "-m", "h2s_dist", *argv]
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=root, env=child_env(root), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
        if index >= warmup:
            times.append(seconds)
    return times


def summarise(times: Sequence[float], target_s: float | None) -> dict[str, Any]:
    median = float(statistics.median(times))
    return {"median_s": median, "min_s": min(times), "max_s": max(times), "times_s": list(times),
            "target_s": target_s, "ok": None if target_s is None else median <= target_s}


def _ok_cell(ok: bool | None) -> str | None:
    return None if ok is None else ("yes" if ok else "NO")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 timed runs per command instead of 7")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per command (default 7; --quick 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first, to warm the file cache (default 1)")
    p.add_argument("--num-jobs", type=int, default=3, help="job runs in the temp store (default 3)")
    p.add_argument("--tracking-uri", action="append", default=[], metavar="URI",
                   help="also time `h2s runs --tracking-uri URI` (repeatable), e.g. your sqlite:///.h2s/mlflow.db")
    p.add_argument("--no-store", action="store_true", help="skip the temp store (and the ~25 s it takes to create)")
    p.add_argument("--baseline", type=pathlib.Path, metavar="CHECKOUT",
                   help="also time another checkout of h2s-dist (e.g. a git worktree of an older commit), "
                        "case by case in the same run, and report the speed-up")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="h2s-bench-cli-") as tmp:
        store_uri = None
        if not args.no_store:
            started = time.perf_counter()
            store_uri = build_store(pathlib.Path(tmp), args.num_jobs)
            print(f"temp store with {args.num_jobs} job runs: {time.perf_counter() - started:.1f} s", flush=True)
        for case in cases(store_uri, args.tracking_uri):
            result = {"argv": case["argv"]}
            if args.baseline:  # the older tree first, then this one, under the same load
                result["baseline"] = summarise(time_command(case["argv"], args.warmup, args.repeats, args.baseline), None)
            result.update(summarise(time_command(case["argv"], args.warmup, args.repeats), case["target_s"]))
            results[case["label"]] = result
            print(f"{case['label']}: median {result['median_s']:.2f} s", flush=True)
    print()
    header, rows = ["command", "median s", "min s", "max s", "target s", "ok?"], []
    for label, r in results.items():
        rows.append([label, r["median_s"], r["min_s"], r["max_s"], r["target_s"], _ok_cell(r["ok"])])
        if args.baseline:
            rows[-1] += [r["baseline"]["median_s"], r["baseline"]["median_s"] / r["median_s"]]
    if args.baseline:
        header += [f"baseline median s ({args.baseline.name})", "speed-up x"]
    print(format_table(header, rows))
    payload = {"commands": results, "repeats": args.repeats, "warmup": args.warmup,
               "baseline": str(args.baseline) if args.baseline else None,
               "temp_store": {"job_runs": args.num_jobs, "stages_per_job": len(STAGES)} if store_uri else None}
    path = write_results("cli", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
