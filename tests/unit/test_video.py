"""read_video / encode_video / write_video / resize_frames: roundtrips and the reasons bad files get."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from h2s_dist.data.video import VideoDecodeError, encode_video, read_video, resize_frames, write_video


def _smooth_clip(num_frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """A moving colour gradient: smooth, so lossy codecs keep it close."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = [np.stack([(xs * 3 + t * 4) % 256, (ys * 4) % 256, np.full_like(xs, 128 + t)], -1) for t in range(num_frames)]
    return np.stack(frames).astype(np.uint8)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return _smooth_clip()


@pytest.mark.parametrize("codec,container", [("libx264", "mp4"), ("libx264", "avi"), ("mpeg4", "avi")])
def test_encode_decode_roundtrip_keeps_count_and_pixels(clip, codec, container):
    data = encode_video(clip, 25.0, codec=codec, container=container, crf=2 if codec == "mpeg4" else 12)
    video = read_video(data)
    assert video.frames.shape == clip.shape and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(25.0)
    assert np.abs(video.frames.astype(int) - clip).mean() < 4.0


def test_write_video_picks_the_container_from_the_suffix(clip, tmp_path):
    write_video(tmp_path / "a.avi", clip, 30000 / 1001, codec="mpeg4")
    write_video(tmp_path / "a.mp4", clip, 30.0)
    assert (tmp_path / "a.avi").read_bytes()[:4] == b"RIFF"
    assert (tmp_path / "a.mp4").read_bytes()[4:8] == b"ftyp"
    assert read_video(tmp_path / "a.avi").fps == pytest.approx(29.97, abs=0.01)
    with open(tmp_path / "a.mp4", "rb") as fh:  # a binary file object works too
        assert len(read_video(fh).frames) == len(clip)


def test_size_and_max_frames_shape_the_output(clip):
    video = read_video(encode_video(clip, 25.0), max_frames=5, size=(32, 24))
    assert video.frames.shape == (5, 24, 32, 3)


def test_empty_input_is_empty_file(tmp_path):
    (tmp_path / "e.avi").write_bytes(b"")
    for source in (b"", tmp_path / "e.avi"):
        with pytest.raises(VideoDecodeError) as info:
            read_video(source)
        assert info.value.reason == "empty file"


def test_text_named_avi_is_not_a_video(tmp_path):
    path = tmp_path / "notes.avi"
    path.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(VideoDecodeError) as info:
        read_video(path)
    assert info.value.kind == "not a video" and info.value.reason.startswith("not a video: ")


def test_audio_only_file_has_no_video_stream():
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            out.mux(packet)
    with pytest.raises(VideoDecodeError) as info:
        read_video(buf.getvalue())
    assert info.value.reason == "no video stream"


@pytest.mark.parametrize("codec,container", [("libx264", "mp4"), ("mpeg4", "avi"), ("libx264", "avi")])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9])
def test_file_cut_short_is_truncated(clip, codec, container, keep):
    data = encode_video(clip, 25.0, codec=codec, container=container, crf=2 if codec == "mpeg4" else 12)
    with pytest.raises(VideoDecodeError) as info:
        read_video(data[: int(len(data) * keep)])
    assert info.value.kind == "truncated", info.value.reason


def test_avi_missing_only_its_trailing_index_still_decodes(clip):
    data = encode_video(clip, 25.0, codec="mpeg4", container="avi")
    assert len(read_video(data[:-8]).frames) == len(clip)  # the idx1 entries, not frame data


def test_odd_size_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="even width and height"):
        encode_video(np.zeros((2, 15, 20, 3), np.uint8), 25.0)


def test_resize_keeps_a_constant_image_constant():
    frames = np.full((3, 40, 60, 3), (10, 200, 90), np.uint8)
    out = resize_frames(frames, (30, 16))
    assert out.shape == (3, 16, 30, 3)
    assert (out == np.array((10, 200, 90), np.uint8)).all()


def test_frame_to_rgb_equals_pyav_conversion():
    """The shared swscale context gives the bytes of PyAV's own per-frame conversion, for
    frames of different sizes one after the other (the cached context must follow)."""
    import av

    from h2s_dist.data.video import frame_to_rgb

    rng = np.random.default_rng(0)
    for height, width in ((16, 24), (32, 48), (16, 24)):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        np.testing.assert_array_equal(frame_to_rgb(frame), frame.to_ndarray(format="rgb24"))
