"""Checkpoint bytes: what they hold comes back, and what this code cannot resume is refused."""

from __future__ import annotations

import io

import pytest
import torch

from h2s_dist.train import checkpoint as ckpt


def test_state_round_trips_and_another_spec_is_refused():
    state = {"step": 3, "data": [{"epoch": 1}], "spec_hash": "abc"}
    data = ckpt.to_bytes(state)
    assert ckpt.from_bytes(data, expected_spec_hash="abc", where="x") == {**state, "format_version": 2}
    with pytest.raises(ckpt.CheckpointMismatchError, match="different stage spec"):
        ckpt.from_bytes(data, expected_spec_hash="other", where="x")


def test_checkpoint_of_the_old_format_without_stream_positions_is_refused_with_what_to_do():
    buffer = io.BytesIO()
    torch.save({"format_version": 1, "samples_seen": [8], "spec_hash": "abc"}, buffer)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"format 1.*--fresh"):
        ckpt.from_bytes(buffer.getvalue(), expected_spec_hash="abc", where="x")


# --- RNG of the rank's own device ---------------------------------------------------


def test_rng_restore_sets_only_the_gpu_this_rank_uses(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([device.index], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("one", int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(("all", len(states), None)))
    gpu1 = torch.device("cuda", 1)
    state = ckpt.rng_state(gpu1)
    assert int(state["cuda"][0]) == 1  # one generator, the rank's, not every visible one
    ckpt.set_rng_state(state, gpu1)
    # An older checkpoint holding every visible device's state: this rank takes its own ...
    ckpt.set_rng_state({**state, "cuda": [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8)]},
                       gpu1)
    # ... and a worker that sees fewer devices than the one that saved does not fail.
    ckpt.set_rng_state({**state, "cuda": [torch.tensor([7], dtype=torch.uint8)]}, torch.device("cuda", 3))
    ckpt.set_rng_state(state, torch.device("cpu"))  # a CPU rank leaves the GPUs alone
    assert calls == [("one", 1, gpu1), ("one", 8, gpu1)]
    assert "cuda" not in ckpt.rng_state(torch.device("cpu"))


def test_cpu_rng_round_trips():
    state = ckpt.rng_state(torch.device("cpu"))
    expected = torch.rand(3)
    torch.rand(5)
    ckpt.set_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


# --- Which checkpoints are kept, written off the training thread -------------------


def _report(session, step: int, epe: float) -> None:
    session.report({"val/epe": epe}, {"step": step, "spec_hash": "h"}, step)


def test_local_session_keeps_the_last_k_plus_the_best_and_remembers_it_across_a_resume(tmp_path):
    from h2s_dist.train.session import BestRule, LocalSession

    session = LocalSession(str(tmp_path), "h", keep_last=2, best=BestRule("val/epe", "min"))
    for step, epe in [(10, 3.0), (20, 1.0), (30, 2.0), (40, 2.5)]:
        _report(session, step, epe)
    session.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step_000000030", "step_000000040"]
    assert session.restore()["step"] == 40  # the latest resumes, not the best
    best = ckpt.from_bytes((tmp_path / "best" / "state.pt").read_bytes(), expected_spec_hash="h", where="best")
    assert best["step"] == 20 and session.best_checkpoint_uri().endswith("best/state.pt")

    again = LocalSession(str(tmp_path), "h", keep_last=2, best=BestRule("val/epe", "min"))
    _report(again, 50, 1.5)  # worse than the 1.0 the first session kept: the best stays step 20
    again.wait()
    assert ckpt.from_bytes((tmp_path / "best" / "state.pt").read_bytes(), expected_spec_hash="h", where="b")["step"] == 20


def test_report_returns_before_the_write_lands_and_wait_waits_for_it(tmp_path, monkeypatch):
    import threading

    from h2s_dist.data import storage
    from h2s_dist.train.session import LocalSession

    release, real_write = threading.Event(), storage.write_bytes

    def slow_write(uri, data):
        assert release.wait(10), "the test never released the write"
        real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", slow_write)
    session = LocalSession(str(tmp_path), "h")
    _report(session, 10, 1.0)  # would block until the release if the write were in this thread
    assert not (tmp_path / "step_000000010").exists()
    release.set()
    session.wait()
    assert (tmp_path / "step_000000010" / "state.pt").is_file()


def test_a_failed_background_write_is_raised_by_wait(tmp_path, monkeypatch):
    from h2s_dist.data import storage
    from h2s_dist.train.session import LocalSession

    def broken(uri, data):
        raise OSError("bucket gone")

    monkeypatch.setattr(storage, "write_bytes", broken)
    session = LocalSession(str(tmp_path), "h")
    _report(session, 10, 1.0)
    with pytest.raises(RuntimeError, match="bucket gone"):
        session.wait()
