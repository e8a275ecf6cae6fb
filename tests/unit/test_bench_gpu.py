"""bench/gpu.py: the dry run on CPU writes every table, and its figures follow from its
measurements (clips/s from ms per step, fps from windows/s, MFU from FLOPs and the peak)."""

from __future__ import annotations

import json
import multiprocessing

import pytest
import torch

from bench import gpu


def test_training_flops_grow_with_the_pixels_and_mfu_needs_a_known_peak():
    # Convolutions dominate: 4x the pixels, 4x the FLOPs (within the few non-conv layers).
    small = gpu.training_flops_per_clip("tiny", 32, torch.device("cpu"))
    large = gpu.training_flops_per_clip("tiny", 64, torch.device("cpu"))
    assert large / small == pytest.approx(4.0, rel=0.02)
    assert gpu.peak_flops(torch.device("cpu"), None) is None
    assert gpu.peak_flops(torch.device("cpu"), 100.0) == 100e12


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="the DDP part forks on CPU")
@pytest.mark.timeout(300)
def test_dry_run_writes_train_inference_and_ddp_tables(tmp_path):
    gpu.main(["--dry-run", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["dry_run"] and result["device"] == "cpu" and "machine" in result
    (train,) = result["train"]  # compile is skipped on a CPU dry run
    assert train["clips_per_s"] == pytest.approx(train["batch"] / train["ms_per_step"] * 1e3)
    assert train["mfu"] is None and train["train_gflop_per_clip"] > 0
    assert {r["method"] for r in result["inference"]} == {"hidden_two_stream", "stacked_temporal"}
    for row in result["inference"]:
        assert row["fps"] == pytest.approx(10 * row["windows_per_s"])
    assert [r["grad_allreduce"] for r in result["ddp"]] == ["fp32", "bf16"]
    assert all(r["workers"] == 2 and r["efficiency"] > 0 for r in result["ddp"])
