"""Cutting a decoded video into segments: nothing lost, nothing repeated, every segment a clip,
memory bounded; and the stream decoder gives read_video's frames one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from h2s_dist.data.ingest_shard import segment_key, segments
from h2s_dist.data.video import VideoDecodeError, encode_video, open_video, read_video


def _frames(n: int) -> list[np.ndarray]:
    return [np.full((2, 2, 3), t % 256, np.uint8) for t in range(n)]


@pytest.mark.parametrize("num_frames", [1, 10, 11, 30, 40, 41, 50, 300, 311, 599, 601])
@pytest.mark.parametrize(("segment_frames", "min_frames"), [(30, 11), (300, 11), (11, 11), (None, 11)])
def test_segments_cover_the_video_once_in_order(num_frames, segment_frames, min_frames):
    cut = list(segments(iter(_frames(num_frames)), segment_frames, min_frames))
    joined = np.concatenate([s.frames for s in cut])
    assert [int(f[0, 0, 0]) for f in joined] == [t % 256 for t in range(num_frames)]
    assert [s.start for s in cut] == list(np.cumsum([0] + [len(s.frames) for s in cut[:-1]]))
    assert [s.whole for s in cut] == [len(cut) == 1] * len(cut)
    if segment_frames is not None:
        assert all(len(s.frames) == segment_frames for s in cut[:-1])
        # the tail joins the segment before it rather than make a sample shorter than a clip
        assert len(cut) == 1 or min_frames <= len(cut[-1].frames) <= segment_frames + min_frames - 1


def test_segments_hold_at_most_one_segment_and_a_clip_of_frames():
    held_max, produced = 0, 0

    def counted():
        nonlocal produced
        for frame in _frames(1000):
            produced += 1
            yield frame

    consumed = 0
    for segment in segments(counted(), 100, 11):
        consumed += len(segment.frames)
        held_max = max(held_max, produced - consumed)
    assert held_max <= 100 + 11 - 1


def test_a_whole_video_keeps_its_key_and_segments_name_their_start():
    only, = segments(iter(_frames(20)), 300, 11)
    first, last = segments(iter(_frames(40)), 20, 11)
    assert segment_key("v_x", only) == "v_x"
    assert (segment_key("v_x", first), segment_key("v_x", last)) == ("v_x_f000000", "v_x_f000020")


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
