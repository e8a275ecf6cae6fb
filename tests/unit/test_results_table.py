"""The results table a job ends with (pipeline.report.results_table)."""

from __future__ import annotations

from h2s_dist.pipeline.report import results_table

METRICS = {
    "eval/videos": 10.0,
    "accuracy/spatial/top1": 0.3, "accuracy/spatial/top5": 0.9, "fps/spatial": 400.0,
    "accuracy/tvl1/top1": 0.2, "fps/tvl1_two_stage": 20.0,
    "accuracy/two_stream_tvl1/top1": 0.7, "fps/two_stream_tvl1": 16.0,
    "accuracy/stacked/top1": 0.3, "fps/stacked": 100.0,
    "accuracy/hidden_two_stream/top1": 0.9, "fps/hidden_two_stream": 80.0,
}


def test_every_scored_stream_gets_a_row_in_table_2_order_with_top1_and_fps():
    lines = results_table(METRICS, "quickstart").splitlines()
    assert lines[0] == "quickstart (10 test videos)"
    rows = [line.split() for line in lines[2:7]]
    assert [row[0] for row in rows] == ["Spatial", "TV-L1", "Two-stream", "Stacked", "Hidden"]
    assert rows[4][-3:] == ["90.0%", "-", "80.0"]
    assert rows[0][-3:] == ["30.0%", "90.0%", "400.0"]


def test_the_speed_ratios_are_hidden_two_stream_over_the_tvl1_pipelines():
    text = results_table(METRICS)
    assert "TV-L1 two-stage stream fps: 4.0x" in text
    assert "two-stream with TV-L1 fps: 5.0x" in text


def test_streams_not_scored_are_left_out_and_nothing_scored_gives_no_table():
    text = results_table({"accuracy/spatial/top1": 0.5})
    assert "Spatial" in text and "Hidden" not in text and "x (paper" not in text
    assert results_table({"loss/total": 1.0}) == ""
