"""bench/report.py renders docs/results.md from the JSON results, and says what is missing."""

from __future__ import annotations

import json

from bench import report, storage


def test_missing_results_name_the_script_to_run(tmp_path):
    text = report.render(tmp_path)
    assert "run `.venv/bin/python bench/speed.py --quick`" in text
    assert text.startswith("# Results")


def test_flow_quality_table_is_filled_from_the_json(tmp_path):
    data = {"epe": {"tvl1": {"synthetic": 0.123}, "zero": {"synthetic": 1.5}}, "pairs": {"synthetic": 4},
            "motionnet": "untrained", "machine": {"cpu_count": 2, "cpu_model": "X"}, "command": "python x"}
    (tmp_path / "flow_quality.json").write_text(json.dumps(data))
    text = report.render(tmp_path)
    assert "| tvl1 | 0.123 |" in text and "| zero | 1.500 |" in text
    assert "`python x`" in text


def test_ucf101_extrapolation_multiplies_bytes_per_frame_by_its_frame_count():
    assert storage.ucf101_frames() == 13_320 * 7 * 25
    assert storage.extrapolate(1000.0) == 1000.0 * 13_320 * 7 * 25


def test_readme_summary_replaces_only_the_text_between_its_markers(tmp_path):
    data = {"epe": {"motionnet": {"synthetic": 0.5}, "zero": {"synthetic": 0.8}}, "pairs": {"synthetic": 4},
            "motionnet": "tiny", "machine": {}, "command": "x"}
    (tmp_path / "flow_quality.json").write_text(json.dumps(data))
    readme = f"intro\n{report.README_BEGIN}\nold table\n{report.README_END}\noutro\n"
    text = report.readme_with_summary(readme, tmp_path)
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old table" not in text
    assert "| flow EPE px (synthetic): motionnet / zero | 0.500 / 0.800 | - |" in text
    assert "run `bench/speed.py --quick`" in text  # what is missing names its script
    assert report.readme_with_summary(text, tmp_path) == text


def test_flow_quality_section_adds_original_pixels_and_motionnet_input_when_resized(tmp_path):
    data = {"epe": {"zero": {"synthetic": 0.8, "kitti": 4.0}},
            "epe_original_px": {"zero": {"synthetic": 0.8, "kitti": 9.7}},
            "pairs": {"synthetic": 4, "kitti": 1}, "sizes": {"synthetic": ["96x64 -> 96x64"],
                                                             "kitti": ["1242x375 -> 512x155"]},
            "motionnet_input": {"kitti": "the pair itself (2-frame network)"},
            "motionnet": "tiny", "machine": {}, "command": "x"}
    (tmp_path / "flow_quality.json").write_text(json.dumps(data))
    text = report.render(tmp_path)
    assert "| zero | 0.800 | 4.000 |" in text and "| zero | 0.800 | 9.700 |" in text
    assert "kitti: 1242x375 -> 512x155" in text and "kitti: the pair itself (2-frame network)" in text


def _learning_run(synthetic: float, steps: int = 100) -> dict:
    shares = {"pixel": 0.7, "smooth": 0.05, "ssim": 0.25}
    return {"steps": steps, "val": {"val/epe/synthetic": synthetic}, "shares_first": shares, "shares_last": shares}


def test_flow_learning_section_states_the_table3_order_and_the_best_motionnet_against_tvl1(tmp_path):
    data = {"settings": {"max_side": 256, "flavour_real": "small", "real_frames": 2}, "pairs": {"synthetic": 4},
            "baselines": {"tvl1": {"synthetic": 0.08}, "zero": {"synthetic": 0.9}},
            "ablation": {"all_practices": _learning_run(0.34), "without_ssim": _learning_run(0.88),
                         "without_smoothness": _learning_run(0.38)},
            "real": _learning_run(0.82, steps=2000), "machine": {}, "command": "x"}
    (tmp_path / "flow_learning.json").write_text(json.dumps(data))
    text = report.render(tmp_path)
    assert "| MotionNet, all practices (synthetic, 100 steps) | 0.340 |" in text
    assert "| MotionNet small-2f, real clips (2000 steps) | 0.820 |" in text
    assert ("order on synthetic `val/epe` (best first): all practices < without smoothness < without ssim; "
            "the paper's") in text
    assert "Best MotionNet on synthetic: 0.340 px (MotionNet, all practices (synthetic, 100 steps)); TV-L1 0.080 px" in text
    assert "| MotionNet, all practices (synthetic, 100 steps) | 0.70 | 0.05 | 0.25 | 0.70 | 0.05 | 0.25 |" in text
    data["ablation"]["without_ssim"] = _learning_run(0.36)  # now in the paper's order
    (tmp_path / "flow_learning.json").write_text(json.dumps(data))
    assert "all practices < without ssim < without smoothness - the paper's order." in report.render(tmp_path)


def test_paper_tables_put_each_evaluate_metric_in_its_row_beside_the_paper(tmp_path):
    import json

    from bench import paper_tables, report

    metrics = {"evaluate_a": {"accuracy/spatial/top1": 0.5, "accuracy/tvl1/top1": 0.25, "eval/videos": 27},
               "evaluate_cached": {"accuracy/tvl1/top1": 0.75, "accuracy/stacked/top1": 0.6},
               "evaluate_c": {"accuracy/stacked/top1": 0.4, "eval/videos": 27},
               "evaluate_none": {"accuracy/stacked/top1": 0.2}}
    tables = paper_tables.tables_from(metrics)
    rows = {(t, r["key"]): r["accuracy"] for t, rs in tables.items() for r in rs}
    assert rows[("table2", "motionnet_cached")] == 75.0 and rows[("table2", "tvl1_two_stage")] == 25.0
    assert rows[("table3", "all")] == rows[("table4", "unsupervised")] == 40.0
    assert rows[("table3", "none")] == 20.0 and rows[("table4", "proxy_guided")] == 60.0
    assert rows[("table2", "stacked_b")] is None  # its stage did not run
    data = {"tables": tables, "paper": paper_tables.PAPER, "num_test_videos": 27, "machine": {}, "command": "x",
            "settings": {"job": "jobs/paper_tables.yaml", "overrides": []}}
    (tmp_path / "paper_tables.json").write_text(json.dumps(data))
    text = report.render(tmp_path)
    assert "| MotionNet (2 frames) + temporal stream, flows cached | 75.00 | 84.09 |" in text
    assert "| None of them | 20.00 | 77.79 |" in text
    assert "| Stacked (c), MotionNet guided by TV-L1 flow (EPE proxy) | 60.00 | - |" in text


def test_quick_paper_tables_cut_every_training_stage_of_the_job():
    from bench import paper_tables
    from h2s_dist.config import load_job

    sets = paper_tables.quick_overrides(str(paper_tables.JOB))
    job = load_job(paper_tables.JOB, sets)
    assert job.stage("pretrain").loop.max_steps == 100 and job.stage("finetune_none").loop.max_steps == 80
    assert job.stage("data").synthetic.num_videos == 54


def test_a_part_rerun_alone_is_merged_under_its_key_with_its_own_stamp(tmp_path):
    from bench._common import merge_results, read_results, write_results

    write_results("feed", {"windows": [1, 2]}, tmp_path)
    merge_results("feed", "cluster", {"rows": [3]}, tmp_path)
    merged = read_results("feed", tmp_path)
    assert merged["windows"] == [1, 2] and merged["cluster"]["rows"] == [3]
    assert {"machine", "command", "written_at"} <= set(merged) & set(merged["cluster"])
    assert not list(tmp_path.glob("*.tmp"))
