"""bench/speed.py helpers: the fps convention, the configuration checks, the flow engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import speed


def test_relative_error_is_zero_for_equal_scores_and_scale_free():
    ref = torch.tensor([[1.0, -2.0, 3.0]])
    assert speed.relative_error(ref.clone(), ref) == 0.0
    assert speed.relative_error(1.01 * ref, ref) == pytest.approx(0.01, rel=1e-4)
    assert speed.relative_error(1000 * 1.01 * ref, 1000 * ref) == pytest.approx(0.01, rel=1e-4)


def test_fp32_is_the_reference_config_and_compile_only_when_asked():
    configs = speed.candidate_configs(torch.device("cpu"), allow_compile=False)
    assert configs[0] == speed.CNNConfig() and configs[0].name == "fp32"
    assert not any(c.compile for c in configs)
    assert any(c.compile for c in speed.candidate_configs(torch.device("cpu"), allow_compile=True))


def test_protocol_fps_counts_250_frames_per_video():
    # 1 ms per CNN input and no flow cost: 250 inputs -> 0.25 s for 250 frames = 1000 fps.
    fps = speed.protocol_fps({"spatial": 1.0, "stacked": 1.0, "flow_vgg": 1.0}, {"tvl1": 0.0, "farneback": 0.0}, 175)
    assert fps["stacked_temporal"] == pytest.approx(1000.0)
    assert fps["hidden_two_stream"] == pytest.approx(500.0)
    # Flow is paid once per pair the 25 windows use (step 6 -> 154 pairs for 175 frames), not per crop.
    tiny = {"spatial": 1e-9, "stacked": 1e-9, "flow_vgg": 1e-9}
    slow = speed.protocol_fps(tiny, {"tvl1": 1.0, "farneback": 1.0}, 175)
    assert slow["tvl1_temporal"] == pytest.approx(250 / 0.154)


def test_flow_engines_agree_and_give_the_vgg_channel_layout():
    windows = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32, 3), dtype=np.uint8)
    windows[0, 1] = np.roll(windows[0, 0], 1, axis=1)
    windows[0, 2] = np.roll(windows[0, 1], 1, axis=1)
    stacks = []
    for mode in ("opencv_threads", "pair_threads"):
        engine = speed.FlowEngine("farneback", mode, 2)
        stacks.append(engine.window_stacks(windows))
        engine.close()
    assert stacks[0].shape == (1, 4, 32, 32) and stacks[0].dtype == np.uint8
    np.testing.assert_array_equal(stacks[0], stacks[1])


def test_fast_path_rows_cover_every_variant_and_the_int8_one():
    """measure_size on tiny networks at 64 px: one row per FastConfig (int8_conv calibrated on
    other windows) plus torch.export, each with its ratio to the TV-L1 row of the same run."""
    import argparse

    from bench import fast_path
    from bench.speed import synthetic_windows
    from h2s_dist.inference import fast_configs

    args = argparse.Namespace(batch=1, warmup=0, repeats=1, video_windows=2, flavour="tiny")
    rows = fast_path.measure_size(64, lambda w: torch.zeros(len(w), 101), synthetic_windows, args)
    methods = [r["method"] for r in rows]
    assert methods[0] == "tvl1_two_stage"
    assert {f"h2s {c.name}" for c in fast_configs()} <= set(methods)
    assert "h2s int8_linear+int8_conv" in methods
    assert all(r["fps"] > 0 and r["ratio_vs_tvl1"] > 0 for r in rows)


def test_interleaved_timing_calls_every_method_once_per_round_and_drops_the_warmup(monkeypatch):
    """Rounds a, b, a, b, ... (both sides of a ratio see the same minutes); the warmup round is not counted."""
    from bench import _common

    now = [0.0]
    monkeypatch.setattr(_common.time, "perf_counter", lambda: now[0])
    order: list[str] = []

    def method(name: str, seconds: float):
        def call():
            now[0] += 50.0 if len(order) < 2 else seconds  # the warmup round is slow
            order.append(name)
        return call

    result = _common.interleaved_median_seconds({"a": method("a", 1.0), "b": method("b", 2.0)}, warmup=1, repeats=3)
    assert order == ["a", "b"] * 4
    assert result == {"a": 1.0, "b": 2.0}
