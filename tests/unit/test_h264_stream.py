"""h264_stream: the H2SV format (H.264, short GOP, frame index) and window decoding from
the keyframe before a window, on tiny generated clips."""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest

from h2s_dist.data import codec, shard_io
from h2s_dist.data.h264_stream import (
    H264StreamError,
    decode_h264_window,
    encode_h264_stream,
    read_index,
)

T, H, W, GOP = 30, 48, 64, 8


def _moving_frames(num_frames: int = T, height: int = H, width: int = W) -> np.ndarray:
    """A smooth texture panning right by 2 px per frame, plus a per-frame grey offset so
    that the mean of a frame tells which frame it is."""
    y, x = np.mgrid[0:height, 0 : width + 2 * num_frames]
    texture = 60 + 40 * np.sin(x / 5.0) + 30 * np.cos(y / 4.0)
    frames = [texture[:, 2 * t : 2 * t + width] + 4 * t for t in range(num_frames)]
    grey = np.clip(np.stack(frames), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def clip():
    frames = _moving_frames()
    return frames, encode_h264_stream(frames, 25.0, gop_frames=GOP)


def test_index_round_trips_frame_offsets_and_keyframes(clip):
    frames, payload = clip
    index = read_index(payload)
    assert (index.num_frames, index.width, index.height) == (T, W, H)
    assert index.keyframes == list(range(0, T, GOP))  # scenecut=0: exactly every GOP frames
    assert index.offsets[0] == 0 and index.stream_start + index.offsets[-1] == len(payload)
    stream = payload[index.stream_start:]
    for t in range(T):
        unit = stream[index.offsets[t]: index.offsets[t + 1]]
        assert unit[:3] == b"\0\0\1" or unit[:4] == b"\0\0\0\1"  # Annex-B start code
        nal_types = {b & 0x1F for b in _nal_headers(unit)}
        # every keyframe is an IDR that carries SPS (7) and PPS (8): a fresh decoder starts there
        assert ({5, 7, 8} <= nal_types) == (t in index.keyframes)


def _nal_headers(unit: bytes) -> list[int]:
    """The header byte of every NAL unit after a 3-byte start code in an Annex-B unit."""
    return [unit[i + 3] for i in range(len(unit) - 3) if unit[i: i + 3] == b"\0\0\1"]


def test_stream_after_the_tables_plays_as_raw_h264(clip, tmp_path):
    frames, payload = clip
    path = tmp_path / "clip.h264"
    path.write_bytes(payload[read_index(payload).stream_start:])
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == T


def test_decoded_frames_are_close_to_the_encoded_ones(clip):
    frames, payload = clip
    decoded = decode_h264_window(payload)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    mse = np.mean((decoded.astype(float) - frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30  # CRF 23 on a smooth texture: well above 30 dB


@pytest.mark.parametrize("start", [0, 1, GOP - 1, GOP, GOP + 1, 2 * GOP + 3, T - 11, T - 2, T - 1])
def test_window_equals_the_slice_of_a_decode_from_frame_0(clip, start):
    frames, payload = clip
    length = min(11, T - start)
    full = decode_h264_window(payload)
    window = decode_h264_window(payload, start, length)
    np.testing.assert_array_equal(window, full[start: start + length])
    # and each is closest to the source frame at its position, not to a neighbour
    errors = ((window[:, None].astype(float) - frames[None].astype(float)) ** 2).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(start, start + length))


def test_window_reads_nothing_before_its_keyframe(clip):
    frames, payload = clip
    index = read_index(payload)
    first_kept = index.keyframes[2]
    broken = bytearray(payload)
    begin, end = index.stream_start, index.stream_start + int(index.offsets[first_kept])
    broken[begin:end] = b"\xff" * (end - begin)  # frames 0..first_kept-1 destroyed
    for start in range(first_kept, min(first_kept + GOP, T - 11 + 1)):
        np.testing.assert_array_equal(
            decode_h264_window(bytes(broken), start, 11), decode_h264_window(payload, start, 11)
        )


def test_random_starts_near_the_end_pad_with_the_last_frame(clip):
    frames, payload = clip
    sample = {"h264s": payload}
    full = decode_h264_window(payload)
    rng = np.random.default_rng(0)
    for start in rng.integers(T - 11, T, 10):
        window = shard_io.read_frame_window(sample, int(start), 11, T)
        available = T - int(start)
        assert window.shape == (11, H, W, 3)
        np.testing.assert_array_equal(window[:available], full[start:])
        assert (window[available:] == full[-1]).all()


def test_odd_sizes_are_padded_for_yuv420_and_cropped_back():
    frames = _moving_frames(num_frames=12, height=31, width=45)
    payload = encode_h264_stream(frames, 30.0, gop_frames=4)
    decoded = decode_h264_window(payload, 5, 4)
    assert decoded.shape == (4, 31, 45, 3)
    assert np.abs(decoded.astype(int) - frames[5:9]).mean() < 4


def test_codec_routes_h264_samples_and_reports_bad_ones(clip):
    frames, payload = clip
    ext, encoded = codec.encode_frames(frames, 25.0, "h264")
    assert ext == "h264s" and encoded[:4] == b"H2SV"
    np.testing.assert_array_equal(codec.decode_frames({".h264s": encoded}, 3, 11), decode_h264_window(encoded, 3, 11))
    with pytest.raises(codec.ClipDecodeError, match="outside"):
        codec.decode_frames({"h264s": encoded}, T - 3, 11)
    with pytest.raises(codec.ClipDecodeError, match="H2SV"):
        codec.decode_frames({"h264s": b"RIFF" + b"\0" * 40})


def test_inconsistent_tables_are_refused(clip):
    _, payload = clip
    bad_offset = bytearray(payload)
    struct.pack_into("<I", bad_offset, 24 + 4 * T, 7)  # last offset no longer ends the payload
    bad_keyframe = bytearray(payload)
    struct.pack_into("<I", bad_keyframe, 24 + 4 * (T + 1), 3)  # first keyframe is not frame 0
    for broken in (bad_offset, bad_keyframe, payload[:-100]):
        with pytest.raises(H264StreamError, match="inconsistent"):
            read_index(bytes(broken))
