"""bench/accuracy.py: the mean over seeds and the paired fusion gain, and their report."""

from __future__ import annotations

import json

import pytest

from bench import accuracy, report


def _seed(top1: dict[str, float]) -> dict:
    full = {row: top1.get(row, 50.0) for row in accuracy.ROWS}
    return {"accuracy": full, "fps": dict.fromkeys(accuracy.ROWS, 10.0), "confidence": {"spatial": 0.12},
            "stage_seconds": {}}


def test_summary_means_over_seeds_and_counts_fusion_gain_in_test_videos():
    # 20 test videos: one video is 5 points.
    per_seed = {0: _seed({"stacked_c": 60.0, "hidden_two_stream_c": 55.0}),
                1: _seed({"stacked_c": 50.0, "hidden_two_stream_c": 60.0})}
    summary = accuracy.summarise(per_seed, num_test=20)
    assert summary["accuracy"]["stacked_c"] == pytest.approx(55.0)
    assert summary["accuracy_sd"]["stacked_c"] == pytest.approx(7.0711, abs=1e-3)
    gain = summary["fusion_gain"]["hidden_two_stream_c"]
    assert gain["temporal"] == "stacked_c" and gain["videos_per_seed"] == [-1, 2] and gain["mean_videos"] == 0.5
    assert summary["fusion_gain"]["two_stream_tvl1"]["videos_per_seed"] == [0, 0]



def _render(tmp_path, per_seed: dict, **settings) -> str:
    """bench/report.py's text for an accuracy.json of these per-seed results (20 test videos)."""
    data = {**accuracy.summarise(per_seed, num_test=20), "per_seed": per_seed, "labels": accuracy.LABELS,
            "num_test_videos": 20, "chance_percent": 100 / 9, "machine": {}, "command": "x",
            "settings": {"num_videos": 80, "pretrain_steps": 1, "finetune_steps": 1, "spatial_steps": 1,
                         "temporal_steps": 1, "num_windows": 5, "num_crops": 5, "scenes": "shared", **settings}}
    (tmp_path / "accuracy.json").write_text(json.dumps(data))
    return report.render(tmp_path)

def test_report_shows_the_spread_and_the_fusion_gain(tmp_path):
    per_seed = {0: _seed({"hidden_two_stream_a": 55.0}), 1: _seed({})}
    text = _render(tmp_path, per_seed)
    assert "mean of 2 seed(s) (0, 1)" in text and "scenes shared" in text
    assert "Hidden two-stream (a) vs Stacked temporal stream (a): [1, 0] (mean +0.50)" in text


def test_report_of_scene_x_motion_weighs_fusion_against_the_better_single_stream(tmp_path):
    per_seed = {0: _seed({"spatial": 30.0, "stacked_c": 35.0, "hidden_two_stream_c": 60.0}),
                1: _seed({"spatial": 40.0, "stacked_c": 30.0, "hidden_two_stream_c": 45.0})}
    text = _render(tmp_path, per_seed, classes="scene_x_motion")
    assert "3 scene types x 3 camera motions" in text and "told apart only by camera motion" not in text
    assert "better of spatial and stacked (c), points per seed: +25.0, +5.0 (mean +15.0)" in text
    assert "1/3 = 0.33" in text


def test_report_has_the_table2_cached_row_and_the_table4_proxy_row_beside_the_others(tmp_path):
    per_seed = {0: _seed({"motionnet_cached": 40.0, "stacked_c_proxy": 45.0})}
    text = _render(tmp_path, per_seed)
    assert "| MotionNet (2 frames) + temporal stream, flows cached | 40.00 | - | 10.00 | 84.09 | 48.54 |" in text
    assert "| Stacked temporal stream (c), proxy-guided MotionNet (Table 4) | 45.00 | - | 10.00 | - | - |" in text
    assert "| TV-L1 two-stage temporal stream | 50.00 |" in text
