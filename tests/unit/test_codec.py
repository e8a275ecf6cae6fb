"""codec: the stored clip formats and window decoding, on tiny frame stacks."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from h2s_dist.data import codec

T, H, W = 12, 32, 48


def _ramp_frames() -> np.ndarray:
    """Frame t is flat grey 20 * t + 10: the decoded mean names the frame."""
    return np.repeat((20 * np.arange(T) + 10).astype(np.uint8), H * W * 3).reshape(T, H, W, 3)


def _sample(frames: np.ndarray, encoding: str) -> dict:
    ext, payload = codec.encode_frames(frames, 25.0, encoding)
    return {"__key__": "k", ext: payload, "json": json.dumps({"num_frames": len(frames)}).encode()}


@pytest.mark.parametrize("encoding", codec.ENCODINGS)
def test_window_holds_the_asked_frames(encoding):
    sample = _sample(_ramp_frames(), encoding)
    clip = codec.decode_frames(sample, start=3, length=4)
    assert clip.shape == (4, H, W, 3) and clip.dtype == np.uint8
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), [70, 90, 110, 130], atol=2)


@pytest.mark.parametrize("encoding", codec.ENCODINGS)
def test_window_equals_slice_of_full_decode(encoding):
    rng = np.random.default_rng(0)
    frames = np.clip(_ramp_frames().astype(int) + rng.integers(-8, 8, (T, H, W, 3)), 0, 255).astype(np.uint8)
    sample = _sample(frames, encoding)
    full = codec.decode_frames(sample)
    assert full.shape == (T, H, W, 3)
    np.testing.assert_array_equal(codec.decode_frames(sample, 5, 6), full[5:11])


def test_jpeg_stack_header_and_offsets_point_at_whole_jpegs():
    _, payload = codec.encode_frames(_ramp_frames(), 25.0, "jpeg")
    magic, version, num_frames, width, height = struct.unpack_from("<4sB3xIII", payload)
    assert (magic, version, num_frames, width, height) == (b"H2SJ", 1, T, W, H)
    offsets = np.frombuffer(payload, "<u4", T + 1, 20)
    data = 20 + 4 * (T + 1)
    assert offsets[0] == 0 and data + offsets[-1] == len(payload)
    for t in range(T):
        jpeg = payload[data + offsets[t]: data + offsets[t + 1]]
        assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"


def test_jpeg_window_never_reads_other_frames():
    _, payload = codec.encode_frames(_ramp_frames(), 25.0, "jpeg")
    offsets = np.frombuffer(payload, "<u4", T + 1, 20)
    data = 20 + 4 * (T + 1)
    broken = bytearray(payload)
    broken[data: data + int(offsets[4])] = b"\0" * int(offsets[4])  # wipe frames 0..3
    clip = codec.decode_frames({"jpgs": bytes(broken)}, start=4, length=2)
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), [90, 110], atol=2)


@pytest.mark.parametrize("encoding", codec.ENCODINGS)
def test_window_past_the_end_is_an_error(encoding):
    with pytest.raises(codec.ClipDecodeError, match="outside"):
        codec.decode_frames(_sample(_ramp_frames(), encoding), start=T - 3, length=4)


def test_dotted_member_names_and_meta_are_accepted():
    ext, payload = codec.encode_frames(_ramp_frames(), 25.0, "jpeg")
    sample = {"." + ext: payload, ".json": b'{"num_frames": 12, "fps": 25.0}'}
    assert codec.sample_meta(sample)["fps"] == 25.0
    assert codec.decode_frames(sample, 0, 1).shape == (1, H, W, 3)


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown encoding"):
        codec.encode_frames(_ramp_frames(), 25.0, "png")
    with pytest.raises(codec.ClipDecodeError, match="no .h264s., .jpgs. or .mp4. member"):
        codec.decode_frames({"__key__": "k", "json": b"{}"})
    with pytest.raises(codec.ClipDecodeError, match="H2SJ"):
        codec.decode_frames({"jpgs": b"RIFF" + b"\0" * 40})
