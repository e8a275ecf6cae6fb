"""bench/cli.py: which commands it times, against which targets, and how a row is judged."""

from __future__ import annotations

import subprocess
import sys

from bench import cli as bench_cli


def test_cases_time_help_validate_and_runs_on_each_store():
    cases = bench_cli.cases("sqlite:////tmp/s.db", ["http://127.0.0.1:5000"])
    assert [c["argv"] for c in cases] == [
        ["--help"], ["validate", "jobs/ucf101_split1.yaml"], ["runs", "--tracking-uri", "sqlite:////tmp/s.db"],
        ["runs", "--tracking-uri", "http://127.0.0.1:5000"]]
    assert [c["target_s"] for c in cases] == [1.0, 2.0, 3.0, 3.0]
    assert len(bench_cli.cases(None, [])) == 2  # --no-store


def test_a_command_is_ok_when_its_median_meets_the_target():
    assert bench_cli.summarise([0.5, 2.0, 0.9], 1.0) | {"times_s": None} == {
        "median_s": 0.9, "min_s": 0.5, "max_s": 2.0, "times_s": None, "target_s": 1.0, "ok": True}
    assert bench_cli.summarise([1.2], 1.0)["ok"] is False
    assert bench_cli.summarise([9.0], None)["ok"] is None


def test_script_help_runs():
    done = subprocess.run([sys.executable, "bench/cli.py", "--help"], capture_output=True, text=True, check=True,
                          cwd=bench_cli.ROOT)
    assert "--quick" in done.stdout and "--tracking-uri" in done.stdout
