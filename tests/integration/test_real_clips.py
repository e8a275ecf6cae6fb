"""Every real clip in ../shared/data/videos decodes to its end and is not refused: real files
carry what generators forget (edit lists that hide frames, MPEG-4 in mp4, portrait frames)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_every_real_clip_decodes_whole_without_being_called_truncated(shared_data):
    from h2s_dist.data.video import VideoDecodeError, open_video

    clips = sorted(p for p in (shared_data / "videos").iterdir() if p.suffix in {".mp4", ".avi", ".mkv", ".webm", ".mov"})
    assert len(clips) >= 40, f"expected the 48 real clips, found {len(clips)}"
    refused, lengths = {}, {}
    for path in clips:
        try:
            with open_video(path, size=(170, 128)) as video:
                lengths[path.name] = sum(1 for _ in video)
        except VideoDecodeError as err:
            refused[path.name] = err.reason
    assert not refused, refused
    assert min(lengths.values()) >= 11, lengths  # every clip gives at least one paper window
