"""Render docs/results.md from bench/results/*.json: our figures beside the paper's.

    .venv/bin/python bench/report.py            # rewrites docs/results.md
    .venv/bin/python bench/report.py --check    # exit 1 if docs/results.md is stale

Each section is filled from one JSON file (speed, accuracy, flow_quality, storage,
scaling); a missing file leaves its section saying which script to run. Never edit
docs/results.md by hand: rerun the benchmark, then this.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench._common import PAPER_TABLE2, RESULTS_DIR, ROOT, read_results  # noqa: E402

OUT = ROOT / "docs" / "results.md"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.{digits}f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(data: dict) -> str:
    m = data.get("machine", {})
    device = m.get("cuda_device") or "no GPU"
    return (f"_Measured {data.get('written_at', '?')} on {m.get('cpu_count')} x {m.get('cpu_model')}, {device}, "
            f"torch {m.get('torch')}; command: `{data.get('command', '?')}`_")


def section_speed(d: dict) -> str:
    s = d["settings"]
    conf = d["configuration"]
    rows = [[m, d["fps"][m], d["ms_per_window"][m], d["protocol_fps"][m], d["paper_fps"].get(m)]
            for m in d["fps"]]
    r = d["ratios"]
    return "\n\n".join([
        f"{s['flavour']} networks (random init), {s['size']}x{s['size']} centre crop, one 11-frame window, "
        f"batches of {s['batch']} windows on {s['device']}; fps counts 10 frames per window. Configuration "
        f"chosen per network (fastest within {s['tolerance']:.0%} relative error of fp32): spatial "
        f"`{conf['spatial']}`, stacked `{conf['stacked']}`, flow VGG16 `{conf['flow_vgg']}`; TV-L1 "
        f"`{conf['tvl1_flow']}`, Farneback `{conf['farneback_flow']}`.",
        md_table(["method", "fps (1 window)", "ms / window", "fps (25x10 protocol, derived)", "paper fps (Titan X)"],
                 rows),
        f"**Hidden two-stream / TV-L1 two-stream: {r['hidden_two_stream_over_tvl1_two_stage']:.2f}x** "
        f"(paper: {d['paper_ratio_hidden_over_tvl1_two_stream']:.2f}x = 120.48 / 12.8); stacked temporal / "
        f"TV-L1 temporal: {r['stacked_temporal_over_tvl1_temporal']:.2f}x (paper: 11.5x = 169.49 / 14.75).",
        provenance(d),
    ])


def section_accuracy(d: dict) -> str:
    rows = [[d["labels"][k], d["accuracy"][k], d["fps"][k], PAPER_TABLE2[k]["accuracy"], PAPER_TABLE2[k]["fps"]]
            for k in d["labels"]]
    s = d["settings"]
    return "\n\n".join([
        f"Tiny networks on the synthetic motion benchmark ({s['num_videos']} videos, {d['num_test_videos']} "
        f"test, 9 classes told apart only by camera motion: chance {d['chance_percent']:.1f} %, and the "
        f"spatial stream is expected near it). Steps: pretrain {s['pretrain_steps']}, fine-tune "
        f"{s['finetune_steps']} per mode, spatial {s['spatial_steps']}, TV-L1 temporal {s['temporal_steps']}; "
        f"test protocol {s['num_windows']} windows x {s.get('num_crops', 10)} crops. One test video = "
        f"{100 / max(d['num_test_videos'], 1):.1f} points: differences of a few points are noise.",
        md_table(["method", "top-1 % (synthetic)", "fps (this machine)", "paper top-1 % (UCF101 split 1)",
                  "paper fps (Titan X)"], rows),
        *_chance_note(d),
        provenance(d),
    ])


def _chance_note(d: dict) -> list[str]:
    one_video = 100 / max(d["num_test_videos"], 1)
    if max(d["accuracy"].values()) <= d["chance_percent"] + one_video + 1e-6:
        return ["**Every stream is within one test video of chance**: this run's training budget is too small "
                "for the tiny networks to leave a constant prediction, so it shows the pipeline running end to "
                "end, not accuracy. Rerun with more steps (see `bench/accuracy.py --help`)."]
    return []


def section_flow(d: dict) -> str:
    datasets = list(d["pairs"])
    rows = [[m, *(d["epe"][m].get(ds) for ds in datasets)] for m in d["epe"]]
    return "\n\n".join([
        f"Average end-point error in pixels (lower is better); MotionNet: {d['motionnet']}. Pairs: "
        + ", ".join(f"{k} {v}" for k, v in d["pairs"].items()) + ".",
        md_table(["method", *datasets], rows, digits=3),
        provenance(d),
    ])


def section_storage(d: dict) -> str:
    c = d["corpus"]
    rows = [[k, v["bytes"], v["bytes_per_frame"], v["ucf101_estimate_gb"]] for k, v in d["storage"].items()]
    need = d["training_data_gb_ucf101_estimate"]
    return "\n\n".join([
        f"{c['videos']} synthetic videos x {c['frames_per_video']} frames at {c['size_wh'][0]}x{c['size_wh'][1]}; "
        f"TV-L1 {d['tvl1']['settings']}. The UCF101 column is an **estimate** (bytes per frame here x "
        f"{d['ucf101_extrapolation']['frames']:,.0f} frames), not a measurement.",
        md_table(["item", "bytes (corpus)", "bytes / frame (or pair)", "UCF101 estimate (GB)"], rows),
        f"Kept for training (UCF101 estimate, jpeg shards): hidden two-stream {need['hidden_two_stream']:.1f} GB, "
        f"TV-L1 two-stage {need['tvl1_two_stage']:.1f} GB (shards + flow cache).",
        provenance(d),
    ])


def section_scaling(d: dict) -> str:
    parts = []
    if "train" in d:
        parts.append(md_table(["Ray workers (gloo)", "per-worker batch", "samples/s", "per worker", "speed-up"],
                              [[r["workers"], r["per_worker_batch"], r["samples_per_s"], r["per_worker_samples_per_s"],
                                r["speedup_vs_1"]] for r in d["train"]]))
    if "loader" in d:
        parts.append(md_table(["loader source", "clips/s", "first batch s"],
                              [[r["source"], r["clips_per_s"], r["first_batch_s"]] for r in d["loader"]]))
    parts.append(provenance(d))
    return "\n\n".join(parts)


SECTIONS: list[tuple[str, str, str, Callable[[dict], str]]] = [
    ("Speed (paper Table 2, fps)", "speed", "bench/speed.py", section_speed),
    ("Accuracy (paper Table 2 shape, synthetic benchmark)", "accuracy", "bench/accuracy.py", section_accuracy),
    ("Flow quality (EPE)", "flow_quality", "bench/flow_quality.py", section_flow),
    ("Storage", "storage", "bench/storage.py", section_storage),
    ("Scaling", "scaling", "bench/scaling.py", section_scaling),
]


def render(results_dir: pathlib.Path = RESULTS_DIR) -> str:
    out = ["# Results", "",
           "Generated by `bench/report.py` from `bench/results/*.json`; do not edit by hand. Each benchmark "
           "runs with `--quick` for a small CPU version; quick figures come from tiny settings on a shared "
           "2-core machine and show the method, not the paper's absolute numbers.", ""]
    for title, name, script, render_section in SECTIONS:
        out += [f"## {title}", ""]
        data = read_results(name, results_dir)
        if data is None:
            out += [f"_No results yet: run `.venv/bin/python {script} --quick`._", ""]
            continue
        try:
            out += [render_section(data), ""]
        except KeyError as err:
            out += [f"_bench/results/{name}.json lacks {err}: rerun `{script}`._", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/results.md differs from a fresh render")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        stale = not OUT.is_file() or OUT.read_text() != text
        print(f"{OUT} is {'stale' if stale else 'up to date'}")
        return int(stale)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
