"""Terminal progress (h2s_dist.progress): the plain-line format and cadence on a fake clock,
the do-nothing variant, a tqdm bar only on a terminal, and `fit` and `score_videos` driving it.

    PYTHONPATH=. python -m pytest tests/unit/test_progress.py
"""

from __future__ import annotations

import io

import pytest
import torch

from h2s_dist import progress
from h2s_dist.train.scoring import score_videos
from tests.unit.test_fit_data import Crash, RecordingTracker, ToyTask, _fit


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_progress_env(monkeypatch):
    for name in (progress.STAGE_ENV, progress.MODE_ENV, progress.EVERY_ENV):
        monkeypatch.delenv(name, raising=False)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_plain_lines_show_position_loss_rate_and_eta_at_the_first_update_then_every_n_seconds():
    clock, out = FakeClock(), io.StringIO()
    bar = progress.build("train", 500, initial=120, rate_unit="samples", stream=out, clock=clock, every_s=10)
    assert isinstance(bar, progress.LineProgress)
    clock.now += 5.0  # start-up is not counted in the rate
    bar.update(121, samples=3872, loss=0.0312)
    for step in range(122, 131):  # 9 steps of 32 samples in 9 s: under 10 s since the last line
        clock.now += 1.0
        bar.update(step, samples=3872 + 32 * (step - 121), loss=0.0301)
    clock.now += 1.0
    bar.update(131, samples=3872 + 320, loss=0.0299)  # 10 s since the first line
    clock.now += 2.0
    bar.update(132, samples=3872 + 352, loss=0.0297)
    bar.close()
    assert _lines(out) == [
        "[train] step 121/500 loss 0.0312 eta ?",
        "[train] step 131/500 loss 0.0299 32.0 samples/s eta 6m09s",  # 369 steps at 1 step/s
        "[train] step 132/500 loss 0.0297 29.3 samples/s done in 17s",
    ]


def test_plain_lines_name_the_stage_from_the_environment_and_count_videos(monkeypatch):
    monkeypatch.setenv(progress.STAGE_ENV, "evaluate_split1")
    clock, out = FakeClock(), io.StringIO()
    bar = progress.build("evaluate", 4, unit="video", stream=out, clock=clock, every_s=0)
    for done in range(1, 5):
        clock.now += 2.0
        bar.update(done, skipped=1 if done > 2 else None)
    bar.close()
    assert _lines(out) == [
        "[evaluate_split1] video 1/4 eta ?",
        "[evaluate_split1] video 2/4 0.5 videos/s eta 4s",
        "[evaluate_split1] video 3/4 skipped 1 0.5 videos/s eta 2s",
        "[evaluate_split1] video 4/4 skipped 1 0.5 videos/s done in 8s",
    ]


def test_a_bar_that_saw_no_update_closes_silently():
    out = io.StringIO()
    progress.build("train", 10, initial=10, stream=out, clock=FakeClock()).close()
    assert out.getvalue() == ""


def test_other_ranks_and_off_get_the_null_variant_which_writes_nothing(monkeypatch):
    out = Terminal()
    assert isinstance(progress.build("train", 10, enabled=False, stream=out), progress.NullProgress)
    monkeypatch.setenv(progress.MODE_ENV, "off")
    bar = progress.build("train", 10, stream=out)
    assert isinstance(bar, progress.NullProgress)
    bar.update(3, samples=6, loss=0.5)
    bar.close()
    assert out.getvalue() == ""


def test_a_tqdm_bar_only_on_a_terminal_unless_the_environment_says_otherwise(monkeypatch):
    terminal = Terminal()
    bar = progress.build("train", 10, initial=4, rate_unit="samples", stream=terminal, clock=FakeClock())
    assert isinstance(bar, progress.TqdmProgress) and bar.bar.n == 4  # a resume starts where it was
    bar.update(5, samples=10, loss=0.25)
    bar.close()
    assert "5/10" in terminal.getvalue() and "loss 0.25" in terminal.getvalue()
    assert isinstance(progress.build("train", 10, stream=io.StringIO()), progress.LineProgress)
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    assert isinstance(progress.build("train", 10, stream=Terminal()), progress.LineProgress)
    monkeypatch.setenv(progress.MODE_ENV, "fancy")
    with pytest.raises(ValueError, match="H2S_PROGRESS='fancy'"):
        progress.build("train", 10, stream=Terminal())


def test_the_headline_loss_is_total_then_action_then_any_loss_term():
    assert progress.headline_loss({"loss/pixel": 2.0, "loss/total": 1.0}) == 1.0
    assert progress.headline_loss({"train/top1": 0.5, "loss/action": 3.0}) == 3.0
    assert progress.headline_loss({"train/top1": 0.5, "loss/mse": 4.0}) == 4.0
    assert progress.headline_loss({"train/top1": 0.5}) is None


def test_durations_read_as_seconds_minutes_and_hours():
    assert [progress.format_duration(s) for s in (0, 45.4, 72, 3599, 7380)] == ["0s", "45s", "1m12s", "59m59s", "2h03m"]


def test_the_launcher_names_the_stage_the_runner_hands_it(monkeypatch):
    from h2s_dist.train.launch import Tracking, _name_stage

    monkeypatch.setenv(progress.STAGE_ENV, "before")  # so the test's end restores the environment
    _name_stage(Tracking("sqlite:///x.db", "run-id"))
    assert progress.stage_label("train") == "before"  # no name: left alone
    _name_stage(Tracking("sqlite:///x.db", "run-id", stage="pretrain"))
    assert progress.stage_label("train") == "pretrain"


def test_slow_rates_read_per_minute():
    assert [progress.format_rate(r, "chunks") for r in (23.14, 0.1, 1 / 70, 0.001)] == [
        "23.1 chunks/s", "0.1 chunks/s", "0.86 chunks/min", "0.06 chunks/min"]


class RecordingProgress:
    def __init__(self, default_label, total, **options):
        self.default_label, self.total, self.options = default_label, total, options
        self.updates: list[tuple[int, int | None, dict]] = []
        self.closed = 0

    def update(self, done, *, samples=None, **values):
        self.updates.append((done, samples, values))

    def close(self):
        self.closed += 1


@pytest.fixture
def recorded(monkeypatch) -> list[RecordingProgress]:
    bars: list[RecordingProgress] = []

    def build(*args, **kwargs):
        bars.append(RecordingProgress(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(progress, "build", build)
    return bars


def test_fit_reports_every_step_with_samples_and_loss_and_closes(tmp_path, recorded):
    _fit(ToyTask(), RecordingTracker(), tmp_path)
    (bar,) = recorded
    assert (bar.total, bar.options["initial"], bar.options["enabled"]) == (6, 0, True)
    assert [(done, samples) for done, samples, _ in bar.updates] == [(k, 2 * k) for k in range(1, 7)]
    # The loss shown is the last logged one (every 2 steps): none before the first log step.
    assert bar.updates[0][2] == {"loss": None}
    assert all(values["loss"] > 0 for _, _, values in bar.updates[1:])
    assert bar.updates[2][2] == bar.updates[1][2]
    assert bar.closed == 1


def test_a_resumed_fit_starts_its_progress_at_the_resumed_step(tmp_path, recorded):
    with pytest.raises(Crash):
        _fit(ToyTask(crash_at_batch=4), RecordingTracker(), tmp_path)
    _fit(ToyTask(), RecordingTracker(), tmp_path)
    resumed = recorded[-1]
    assert resumed.options["initial"] == 3 and [done for done, _, _ in resumed.updates] == [4, 5, 6]
    assert resumed.updates[0][1] == 8  # samples seen, with the 6 before the checkpoint


def test_fit_writes_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(progress.STAGE_ENV, "pretrain")
    _fit(ToyTask(), RecordingTracker(), tmp_path)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[pretrain] step 1/6 eta ?"  # no loss logged yet (every 2 steps)
    assert lines[-1].startswith("[pretrain] step 6/6 loss ") and " samples/s done in " in lines[-1]


class FakeEvalLoader:
    """What score_videos reads from an EvalLoader: items, their count and the skip list."""

    def __init__(self, num_videos: int):
        self.items = [type("Item", (), {"key": f"v{k}", "label": k % 2, "clips": None})() for k in range(num_videos)]
        self.skipped: list = []

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def test_score_videos_reports_the_videos_scored_and_closes():
    bar = RecordingProgress("evaluate", 3)
    score_videos(FakeEvalLoader(3), {"spatial": lambda item: torch.zeros(2)}, decode_part="decode", progress=bar)
    assert [done for done, _, _ in bar.updates] == [1, 2, 3] and bar.closed == 1
