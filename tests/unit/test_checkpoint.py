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
