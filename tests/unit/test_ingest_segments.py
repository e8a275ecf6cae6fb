"""Cutting a decoded video into segments: consecutive segments overlap so that every training
window lies whole inside one, offsets are exact, every segment a clip, memory bounded, test
videos stay whole; and the stream decoder gives read_video's frames one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from h2s_dist.data import codec
from h2s_dist.data.ingest_defaults import DEFAULT_SEGMENT_OVERLAP_FRAMES
from h2s_dist.data.ingest_shard import IngestOptions, segment_key, segments
from h2s_dist.data.ingest_shard import encode_video as ingest_video
from h2s_dist.data.sources import VideoEntry
from h2s_dist.data.video import VideoDecodeError, encode_video, open_video, read_video

CLIP = 11  # the paper's clip length


def _frames(n: int) -> list[np.ndarray]:
    return [np.full((2, 2, 3), t % 256, np.uint8) for t in range(n)]


def _cut(num_frames: int, segment_frames: int | None, min_frames: int = 11, overlap: int = 0) -> list:
    return list(segments(iter(_frames(num_frames)), segment_frames, min_frames, overlap))


NUM_FRAMES = [1, 10, 11, 12, 30, 31, 40, 41, 50, 300, 301, 311, 599, 601]
CUTS = [(30, 11, 0), (300, 11, 0), (11, 11, 0), (30, 11, 10), (300, 11, 10), (21, 11, 10), (30, 5, 3), (30, 11, 20)]


@pytest.mark.parametrize("num_frames", NUM_FRAMES)
@pytest.mark.parametrize(("segment_frames", "min_frames", "overlap"), [*CUTS, (None, 11, 10)])
def test_segments_hold_the_video_frames_at_their_offsets(num_frames, segment_frames, min_frames, overlap):
    cut = _cut(num_frames, segment_frames, min_frames, overlap)
    for s in cut:  # the manifest's start_frame is exact: frame j of a segment is frame start + j of the video
        assert [int(f[0, 0, 0]) for f in s.frames] == [t % 256 for t in range(s.start, s.start + len(s.frames))]
    assert cut[0].start == 0 and cut[-1].start + len(cut[-1].frames) == num_frames
    assert [s.whole for s in cut] == [len(cut) == 1] * len(cut)
    if segment_frames is not None:
        stride = segment_frames - overlap
        assert [s.start for s in cut] == [k * stride for k in range(len(cut))]  # neighbours share `overlap` frames
        assert all(len(s.frames) == segment_frames for s in cut[:-1])
        # the tail is a clip and brings a frame its neighbour lacks, else it joins that neighbour
        assert len(cut) == 1 or min_frames <= len(cut[-1].frames) <= max(segment_frames, stride + min_frames - 1)
        assert len(cut) == 1 or cut[-1].start + len(cut[-1].frames) > cut[-2].start + segment_frames


@pytest.mark.parametrize("num_frames", NUM_FRAMES)
@pytest.mark.parametrize(("segment_frames", "min_frames", "overlap"), CUTS)
def test_every_window_start_lies_whole_inside_a_segment(num_frames, segment_frames, min_frames, overlap):
    """The oracle of the overlap: each of the N - L + 1 windows of L <= overlap + 1 frames of
    the video is a window of some segment, and for L = overlap + 1 of exactly one (no start
    drawn twice as often as its neighbours)."""
    cut = _cut(num_frames, segment_frames, min_frames, overlap)
    for clip_len in {1, min(CLIP, overlap + 1), overlap + 1}:
        covering = [sum(s.start <= t and t + clip_len <= s.start + len(s.frames) for s in cut)
                    for t in range(num_frames - clip_len + 1)]
        assert all(n >= 1 for n in covering), (clip_len, covering.index(0))
        if clip_len == overlap + 1 and len(cut) > 1:
            assert set(covering) == {1}


def test_without_overlap_a_window_across_each_cut_is_lost():
    # What the overlap fixes: 300-frame segments without it never give the 10 windows that straddle a cut.
    cut = _cut(600, 300, 11, overlap=0)
    lost = [t for t in range(600 - CLIP + 1)
            if not any(s.start <= t and t + CLIP <= s.start + len(s.frames) for s in cut)]
    assert lost == list(range(290, 300))
    assert DEFAULT_SEGMENT_OVERLAP_FRAMES == CLIP - 1
    assert [s.start for s in _cut(600, 300, 11, DEFAULT_SEGMENT_OVERLAP_FRAMES)] == [0, 290, 580]


def test_an_overlap_of_a_whole_segment_is_refused():
    from h2s_dist.specs.driver import IngestSpec

    with pytest.raises(ValueError, match="overlap_frames < segment_frames"):
        _cut(100, 30, 11, overlap=30)
    with pytest.raises(ValueError, match="segment_overlap_frames 30 must be < segment_frames 30"):
        IngestSpec(source="synthetic", segment_frames=30, segment_overlap_frames=30)
    assert IngestSpec(source="synthetic").segment_overlap_frames == DEFAULT_SEGMENT_OVERLAP_FRAMES


@pytest.mark.parametrize("overlap", [0, 10])
def test_segments_hold_a_bounded_number_of_frames(overlap):
    held_max, produced = 0, 0

    def counted():
        nonlocal produced
        for frame in _frames(1000):
            produced += 1
            yield frame

    consumed = 0  # frames the consumer has been handed that the generator no longer needs
    for segment in segments(counted(), 100, 11, overlap):
        held_max = max(held_max, produced - consumed)
        consumed = segment.start + 100 - overlap
    assert held_max <= max(100 + 1, 100 - overlap + 11)


def test_a_whole_video_keeps_its_key_and_segments_name_their_start():
    only, = _cut(20, 300, overlap=10)
    first, last = _cut(40, 20, overlap=0)
    assert segment_key("v_x", only) == "v_x"
    assert (segment_key("v_x", first), segment_key("v_x", last)) == ("v_x_f000000", "v_x_f000020")
    assert [segment_key("v_x", s) for s in _cut(40, 20, overlap=10)] == ["v_x_f000000", "v_x_f000010",
                                                                         "v_x_f000020"]


def _distinct_frames(num_frames: int) -> np.ndarray:
    """Frames no two of which look alike: a bright bar that moves 4 px a frame on a level that rises."""
    frames = np.zeros((num_frames, 48, 64, 3), np.uint8)
    for t in range(num_frames):
        frames[t] = 20 + 4 * t
        frames[t, :, (4 * t) % 60: (4 * t) % 60 + 4] = 250
    return frames


@pytest.mark.parametrize("encoding", ["jpeg", "h264"])
def test_decoded_segments_show_the_source_frames_at_their_offsets(tmp_path, encoding):
    """Pixel oracle: a generated 45-frame video, written as H.264 and ingested in 20-frame
    segments overlapping by 10: decoding frame j of the sample starting at s gives the source
    frame s + j (the nearest source frame by mean absolute difference, and a close one)."""
    source = tmp_path / "clip.mp4"
    source.write_bytes(encode_video(_distinct_frames(45), 25.0, crf=12))
    original = read_video(str(source)).frames  # what the ingest decodes, before its own encoding
    options = IngestOptions(encoding=encoding, size=None, segment_frames=20, segment_overlap_frames=10)
    video = ingest_video(VideoEntry(str(source), "clip"), options, str(tmp_path))
    assert video.reason is None
    assert [(s.key, s.start, s.num_frames) for s in video.samples] == [
        ("clip_f000000", 0, 20), ("clip_f000010", 10, 20), ("clip_f000020", 20, 20), ("clip_f000030", 30, 15)]
    for sample in video.samples:
        with open(sample.path, "rb") as fh:
            decoded = codec.decode_frames({sample.ext: fh.read(), "json": b'{"num_frames": %d}' % sample.num_frames})
        assert len(decoded) == sample.num_frames
        errors = np.abs(decoded[:, None].astype(int) - original[None].astype(int)).mean(axis=(2, 3, 4))
        assert errors.argmin(axis=1).tolist() == list(range(sample.start, sample.start + sample.num_frames))
        assert errors.min(axis=1).max() < 4


def test_a_test_video_is_never_cut(tmp_path):
    """Evaluation scores each sample as one video: a video in the test subset of any split stays
    whole; the same video in training only is cut."""
    frames = _distinct_frames(45)
    generate = lambda: (frames, 25.0)  # noqa: E731
    options = IngestOptions(encoding="jpeg", size=None, segment_frames=20, segment_overlap_frames=10)
    for splits, starts in (({1: "test"}, [0]), ({1: "train", 2: "test"}, [0]), ({1: "train"}, [0, 10, 20, 30]),
                           ({}, [0, 10, 20, 30])):
        video = ingest_video(VideoEntry("synthetic:0", "v", 0, "c", splits, generate), options, str(tmp_path))
        assert [s.start for s in video.samples] == starts, splits
        assert video.samples[0].key == ("v" if starts == [0] else "v_f000000")  # a whole video keeps its key


def test_open_video_streams_the_frames_read_video_returns(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (15, 32, 48, 3), np.uint8)
    data = encode_video(frames, 25.0, crf=18)
    whole = read_video(data, size=(24, 16))
    with open_video(data, size=(24, 16), threads=1) as video:
        streamed = np.stack(list(video))
        assert video.fps == whole.fps == 25.0
    np.testing.assert_array_equal(streamed, whole.frames)
    with pytest.raises(VideoDecodeError, match="truncated"), open_video(data[: len(data) // 2]) as video:
        list(video)
