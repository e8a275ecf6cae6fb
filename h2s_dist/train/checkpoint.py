"""The whole resume state of a training stage, as one serialisable dict.

A checkpoint holds the models, optimiser, scheduler, step, samples seen, every rank's data
position (its stream's `checkpoint()`), the samples skipped so far, every RNG state and a
hash of the spec it was written under (STYLE habit 10).
Resuming under a different spec is refused: silently continuing someone else's run with
new hyper-parameters is the failure this guards against.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# 2: per-rank stream positions ("data") and the skipped samples replaced per-rank samples_seen.
FORMAT_VERSION = 2


class CheckpointMismatchError(ValueError):
    """A checkpoint was written under another spec (or another format)."""


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short stable hash of a plain-data spec (key order does not matter)."""
    text = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rng_state(device: torch.device) -> dict[str, Any]:
    """This rank's RNG states: Python, numpy, torch's CPU generator and, when the rank trains on
    a GPU, that GPU's generator (not every visible one's: the other GPUs belong to other ranks)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` saved; the GPU generator only into the GPU this rank uses, so a
    resumed worker that sees fewer (or other) devices than the one that saved still resumes."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or device.type != "cuda":
        return
    if isinstance(saved, (list, tuple)):  # older checkpoints held every visible device's state
        index = device.index or 0
        if index >= len(saved):
            return
        saved = saved[index]
    torch.cuda.set_rng_state(saved, device)


def to_bytes(state: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, *, expected_spec_hash: str, where: str) -> dict[str, Any]:
    """Load a checkpoint and check that it belongs to this spec.

    `where` names the checkpoint in error messages (its URI).
    """
    # weights_only=False: the state holds RNG tuples and numpy arrays, and checkpoints
    # come from the user's own storage, not from strangers.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"{where}: checkpoint format {version}, this code reads format {FORMAT_VERSION} only (older checkpoints "
            "lack the data stream's position and cannot resume). Start the stage fresh (h2s run --fresh) or in "
            "another output location."
        )
    found = state.get("spec_hash")
    if found != expected_spec_hash:
        raise CheckpointMismatchError(
            f"{where} was written under a different stage spec (hash {found}, this spec {expected_spec_hash}). "
            "Resume with the spec it was written under, or start fresh in another output location "
            "(h2s run --fresh)."
        )
    return state
