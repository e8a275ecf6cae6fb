"""The rows of the paper's Tables 2, 3 and 4 from one run of jobs/paper_tables.yaml.

Runs the job (finished stages are reused, as `h2s run` does) on the synthetic set by default,
reads its evaluate stages' metrics and writes bench/results/paper_tables.json, which
bench/report.py renders into docs/results.md beside the paper's numbers. Any `--set` of
`h2s run` applies (another dataset, more steps):

    .venv/bin/python bench/paper_tables.py --keep /tmp/paper_tables          # CPU, tens of minutes
    .venv/bin/python bench/paper_tables.py --set stages.pretrain.loop.max_steps=2000 ...
    .venv/bin/python bench/report.py

Writes {"tables": {"table2" | "table3" | "table4": [{"key", "label", "stage", "metric", "accuracy"}]},
"paper": {...}, "num_test_videos", "settings"}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import PAPER_TABLE2, PAPER_TABLE3, PAPER_TABLE4, ROOT, write_results  # noqa: E402

JOB = ROOT / "jobs" / "paper_tables.yaml"

# table -> [(row key, label, evaluate stage of jobs/paper_tables.yaml, metric)]
ROWS: dict[str, list[tuple[str, str, str, str]]] = {
    "table2": [
        ("spatial", "Spatial stream", "evaluate_a", "accuracy/spatial/top1"),
        ("tvl1_two_stage", "TV-L1 two-stage temporal stream", "evaluate_a", "accuracy/tvl1/top1"),
        ("motionnet_cached", "MotionNet (2 frames) + temporal stream, flows cached", "evaluate_cached",
         "accuracy/tvl1/top1"),
        ("stacked_a", "Stacked temporal stream (a)", "evaluate_a", "accuracy/stacked/top1"),
        ("stacked_b", "Stacked temporal stream (b)", "evaluate_b", "accuracy/stacked/top1"),
        ("stacked_c", "Stacked temporal stream (c)", "evaluate_c", "accuracy/stacked/top1"),
        ("two_stream_tvl1", "Two-stream (spatial + TV-L1)", "evaluate_a", "accuracy/two_stream_tvl1/top1"),
        ("hidden_two_stream_a", "Hidden two-stream (a)", "evaluate_a", "accuracy/hidden_two_stream/top1"),
        ("hidden_two_stream_b", "Hidden two-stream (b)", "evaluate_b", "accuracy/hidden_two_stream/top1"),
        ("hidden_two_stream_c", "Hidden two-stream (c)", "evaluate_c", "accuracy/hidden_two_stream/top1"),
    ],
    "table3": [
        ("all", "All practices", "evaluate_c", "accuracy/stacked/top1"),
        ("no_small_disp", "Without small-displacement design", "evaluate_no_small_disp", "accuracy/stacked/top1"),
        ("no_ssim", "Without SSIM", "evaluate_no_ssim", "accuracy/stacked/top1"),
        ("no_conv_between", "Without conv between deconvs", "evaluate_no_conv_between", "accuracy/stacked/top1"),
        ("no_smooth", "Without smoothness", "evaluate_no_smooth", "accuracy/stacked/top1"),
        ("none", "None of them", "evaluate_none", "accuracy/stacked/top1"),
    ],
    "table4": [
        ("unsupervised", "Stacked (c), unsupervised MotionNet", "evaluate_c", "accuracy/stacked/top1"),
        ("proxy_guided", "Stacked (c), MotionNet guided by TV-L1 flow (EPE proxy)", "evaluate_cached",
         "accuracy/stacked/top1"),
    ],
}
PAPER = {"table2": {k: v["accuracy"] for k, v in PAPER_TABLE2.items()}, "table3": PAPER_TABLE3, "table4": PAPER_TABLE4}


def tables_from(metrics: dict[str, dict[str, float]]) -> dict[str, list[dict]]:
    """{table: rows} from {evaluate stage: its metrics}; top-1 in %, None where a stage or metric is missing."""
    tables = {}
    for table, rows in ROWS.items():
        tables[table] = []
        for key, label, stage, metric in rows:
            value = metrics.get(stage, {}).get(metric)
            tables[table].append({"key": key, "label": label, "stage": stage, "metric": metric,
                                  "accuracy": None if value is None else 100 * value})
    return tables


def quick_overrides(job_path: str, fraction: int = 5) -> list[str]:
    """--set overrides for --quick: 54 synthetic videos, every training stage's steps / `fraction`."""
    from h2s_dist.config import read_yaml

    sets = ["stages.data.synthetic.num_videos=54"]
    for stage in read_yaml(job_path)["stages"]:
        steps = (stage.get("loop") or {}).get("max_steps")
        if steps:
            quick = max(1, steps // fraction)
            sets += [f"stages.{stage['name']}.loop.max_steps={quick}",
                     f"stages.{stage['name']}.loop.checkpoint_every_steps={quick}",
                     f"stages.{stage['name']}.loop.log_every_steps={max(1, quick // 5)}"]
    return sets


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", default=str(JOB), help="the job spec (default jobs/paper_tables.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="as `h2s run --set` (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="54 videos and a fifth of the steps: the plumbing of every row, not their accuracy")
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="workspace and MLflow store under DIR (a rerun reuses finished stages); default: a temporary folder")
    args = p.parse_args(argv)

    from h2s_dist.config import load_job
    from h2s_dist.pipeline.runner import run_job

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = pathlib.Path(args.keep) if args.keep else pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        quick = quick_overrides(args.job) if args.quick else []
        overrides = [f"workspace={work / 'workspace'}", f"tracking_uri=sqlite:///{work / 'mlflow.db'}", *quick,
                     *args.overrides]
        job = load_job(args.job, overrides)
        result = run_job(job, echo=lambda line: print(line, flush=True))
        metrics = {name: stage.outputs.get("metrics", {}) for name, stage in result.stages.items()
                   if stage.kind == "evaluate"}
    tables = tables_from(metrics)
    payload = {"tables": tables, "paper": PAPER, "num_test_videos": int(metrics.get("evaluate_c", {}).get("eval/videos", 0)),
               "settings": {"job": args.job, "overrides": args.overrides, "quick": args.quick},
               "total_seconds": round(time.perf_counter() - started, 1)}
    for table, rows in tables.items():
        print(f"\n{table}")
        for row in rows:
            value = "-" if row["accuracy"] is None else f"{row['accuracy']:.1f}"
            print(f"  {row['label']:60s} {value:>6s}   paper {PAPER[table].get(row['key'])}")
    print(f"wrote {write_results('paper_tables', payload)}")
    return payload


if __name__ == "__main__":
    main()
