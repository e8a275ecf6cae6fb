"""Video decode and encode through PyAV, with bad files reported by a short reason.

`read_video` turns a path, bytes or a binary file object into uint8 RGB frames (T, H, W, 3)
and the frame rate; `encode_video` / `write_video` go the other way (mp4 or avi, libx264 or
mpeg4). Bad input raises `VideoDecodeError`, whose `reason` starts with one of

    "empty file" | "not a video: <av error>" | "no video stream" | "truncated: <detail>"

so ingest can skip a file and list it by reason. How truncation is recognised (a cut file
behaves differently per container in FFmpeg, see `_container_shortfall`):

- the file cannot be opened and its own header says it should be longer than it is
  (an mp4 whose `moov` box was cut off; an avi shorter than its RIFF size) -> truncated;
- FFmpeg raises while decoding, after the stream opened -> truncated (decode error mid-stream);
- decoding ends quietly with fewer frames than the container declares (an avi cut in its
  data; FFmpeg just stops) -> truncated. A little slack (`_DECLARED_FRAMES_SLACK`: 2 frames or
  2 %) is allowed only when the header is intact, since some writers miscount;
- no frame decodes at all -> truncated.
A file whose header overstates its length but whose frames all decode (only the trailing
avi index was lost) is accepted: the frames are what matter.

Run `python -m h2s_dist.data.video` to measure decode speed on a 64-frame 340x256 clip.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

# FFmpeg's declared frame count can be off by a frame or two in files whose header is whole:
# avi written with packed B-frames (xvid) miscount by one; an mp4's edit list can hide its
# first frames (co-tracker__pillow.mp4 in ../shared/data/videos declares 149 and decodes 147).
# A cut file is caught by its header (`_container_shortfall`, no slack then), so 2 frames or
# 2 % of the declared count, whichever is more, cost nothing.
_DECLARED_FRAMES_SLACK = 2
_DECLARED_FRAMES_SLACK_FRACTION = 0.02

_CONTAINER_BY_SUFFIX = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska"}


class VideoDecodeError(Exception):
    """A file that is not a decodable video. `reason` is short and machine friendly:
    "empty file", "not a video: ...", "no video stream" or "truncated: ..."."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    @property
    def kind(self) -> str:
        """The reason without its detail: "empty file", "not a video", "no video stream", "truncated"."""
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True)
class DecodedVideo:
    """frames (T, H, W, 3) uint8 RGB; fps frames per second (0.0 when the file does not say)."""

    frames: np.ndarray
    fps: float


# ----------------------------------------------------------------------------- decoding


def read_video(
    source: VideoSource,
    *,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    threads: int = 0,
) -> DecodedVideo:
    """Decode the first video stream of `source` (path, bytes, or seekable binary file).

    max_frames: stop after this many frames (the truncation check then only applies when
    the file ends before that). size: (width, height) to resize every frame to, done by
    FFmpeg's swscale (bilinear) while converting to RGB, which is cheaper than resizing after.
    threads: decoder threads; 0 lets FFmpeg pick (frame + slice threading, thread_type "AUTO"),
    1 decodes on the calling thread, the better choice when many loader workers decode at once.
    Raises VideoDecodeError for bad input (see the module docstring), ValueError for bad
    arguments, FileNotFoundError for a missing path. `open_video` gives the same frames one
    at a time.
    """
    with open_video(source, max_frames=max_frames, size=size, threads=threads) as video:
        frames = list(video)
    return DecodedVideo(frames=np.stack(frames), fps=video.fps)


@contextlib.contextmanager
def open_video(
    source: VideoSource,
    *,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    threads: int = 0,
) -> Iterator[VideoFrames]:
    """`read_video` one frame at a time, for videos too long to hold whole:

        with open_video(path, size=(340, 256)) as video:
            for frame in video:      # (H, W, 3) uint8 RGB; VideoDecodeError as read_video raises it
                ...
            video.fps

    Arguments and errors as `read_video`'s; a truncation found at the end of the stream is
    raised by the iteration, after the frames before it were yielded."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = FFmpeg's choice), got {threads}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if size is not None:
        _check_size(size)
    fh, close = _open_binary(source)
    try:
        if _remaining_size(fh) == 0:
            raise VideoDecodeError("empty file")
        start = fh.tell()
        try:
            container = av.open(fh, mode="r")
        except av.FFmpegError as err:
            shortfall = _container_shortfall(fh, start)
            if shortfall:
                raise VideoDecodeError(f"truncated: {shortfall}") from err
            raise VideoDecodeError(f"not a video: {_av_message(err)}") from err
        with container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            yield VideoFrames(container, fh, start, max_frames=max_frames, size=size, threads=threads)
    finally:
        if close:
            fh.close()


class VideoFrames:
    """The frames of an open video, decoded while iterated (see `open_video`).

    fps: frames per second (0.0 when the file does not say); declared_frames: the count the
    container states (0 when it does not)."""

    def __init__(self, container, fh: BinaryIO, start: int, *, max_frames: int | None,
                 size: tuple[int, int] | None, threads: int) -> None:
        self._container, self._fh, self._start = container, fh, start
        self._stream = container.streams.video[0]
        self._max_frames, self._size = max_frames, size
        # Frame threads decode several frames at once; they pay off on big frames and idle cores.
        if threads != 1:
            self._stream.thread_type = "AUTO"
            self._stream.codec_context.thread_count = threads
        self.declared_frames = int(self._stream.frames or 0)
        self.fps = _fps(self._stream)

    def __iter__(self) -> Iterator[np.ndarray]:
        count, first_size = 0, None
        try:
            for frame in self._container.decode(self._stream):
                # Every frame goes to the first frame's (or the requested) size, so a stream that
                # changes resolution mid-way still stacks.
                first_size = first_size or self._size or (frame.width, frame.height)
                yield frame.to_ndarray(format="rgb24", width=first_size[0], height=first_size[1],
                                       interpolation="BILINEAR")
                count += 1
                if self._max_frames is not None and count >= self._max_frames:
                    return
        except av.FFmpegError as err:
            raise VideoDecodeError(f"truncated: decode error after {count} frames: {_av_message(err)}") from err
        if not count:
            raise VideoDecodeError("truncated: no frame decoded")
        declared = self.declared_frames
        if declared:
            wanted = declared if self._max_frames is None else min(declared, self._max_frames)
            # Slack only when the header is intact: a file shorter than it says lost its tail.
            slack = 0 if _container_shortfall(self._fh, self._start) else max(
                _DECLARED_FRAMES_SLACK, int(_DECLARED_FRAMES_SLACK_FRACTION * declared))
            if count < wanted - slack:
                raise VideoDecodeError(f"truncated: decoded {count} of {declared} declared frames")


def _fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _av_message(err: av.FFmpegError) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.splitlines()[0][:200] if text else type(err).__name__


def _open_binary(source: VideoSource) -> tuple[BinaryIO, bool]:
    """A seekable binary file for `source` and whether we must close it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), True
    if isinstance(source, (str, os.PathLike)):
        return open(source, "rb"), True
    if hasattr(source, "read") and hasattr(source, "seek"):
        return source, False
    raise ValueError(f"read_video needs a path, bytes or a seekable binary file, got {type(source).__name__}")


def _remaining_size(fh: BinaryIO) -> int:
    here = fh.tell()
    end = fh.seek(0, io.SEEK_END)
    fh.seek(here)
    return end - here


def _container_shortfall(fh: BinaryIO, start: int) -> str | None:
    """Whether the file's own header says it should be longer than it is; a short detail or None.

    RIFF (avi): bytes 4..8 hold the size of everything after them. ISO BMFF (mp4/mov): walk the
    top-level boxes; a box that ends past the end of file means the tail was cut off (FFmpeg
    then fails to open the file when the cut took the `moov` box, the default layout)."""
    end = fh.seek(0, io.SEEK_END)
    size = end - start
    fh.seek(start)
    head = fh.read(12)
    if len(head) >= 12 and head[:4] == b"RIFF":
        declared = struct.unpack("<I", head[4:8])[0] + 8
        return f"RIFF header declares {declared} bytes, file has {size}" if size < declared else None
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return _bmff_shortfall(fh, start, size)
    return None


def _bmff_shortfall(fh: BinaryIO, start: int, size: int) -> str | None:
    offset = 0
    while offset + 8 <= size:
        fh.seek(start + offset)
        header = fh.read(16)
        box_size, box_type = struct.unpack(">I4s", header[:8])
        if box_size == 1:  # 64-bit size follows the type
            if len(header) < 16:
                return f"box header at {offset} cut"
            box_size = struct.unpack(">Q", header[8:16])[0]
        elif box_size == 0:  # box runs to the end of file
            return None
        if box_size < 8:
            return None  # not a box structure we understand; let FFmpeg's verdict stand
        if offset + box_size > size:
            name = box_type.decode("latin-1", "replace")
            return f"'{name}' box ends at byte {offset + box_size}, file has {size}"
        offset += box_size
    return None


# ----------------------------------------------------------------------------- encoding


def encode_video(
    frames: np.ndarray,
    fps: float,
    *,
    codec: str = "libx264",
    crf: int = 23,
    container: str = "mp4",
    preset: str | None = None,
) -> bytes:
    """Encode uint8 RGB frames (T, H, W, 3) to a video file held in memory.

    codec: "libx264" (crf = constant rate factor, 0 lossless-ish .. 51) or "mpeg4" (crf is used
    as the quantiser scale, clipped to 1..31). container: "mp4" or "avi" (or any FFmpeg muxer
    name). preset: libx264 speed preset ("ultrafast" .. "veryslow"); None keeps x264's default.
    H and W must be even (yuv420p halves the chroma planes): crop or `resize_frames` first.
    mp4 output keeps FFmpeg's default layout, `moov` index last (faststart needs a named file).
    """
    buf = io.BytesIO()
    _encode_into(buf, frames, fps, codec=codec, crf=crf, container=container, preset=preset)
    return buf.getvalue()


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str = "libx264",
    crf: int = 23,
    preset: str | None = None,
) -> None:
    """Encode frames (T, H, W, 3) uint8 RGB to `path`; the container follows the suffix
    (.mp4, .avi, .mov, .mkv). See `encode_video` for codec, crf, preset and size rules."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in _CONTAINER_BY_SUFFIX:
        raise ValueError(f"write_video: unknown suffix {suffix!r} in {path}; use one of {sorted(_CONTAINER_BY_SUFFIX)}")
    data = encode_video(frames, fps, codec=codec, crf=crf, container=_CONTAINER_BY_SUFFIX[suffix], preset=preset)
    with open(path, "wb") as fh:
        fh.write(data)


def _encode_into(target, frames, fps, *, codec, crf, container, preset) -> None:
    frames = _check_frames(frames)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    with av.open(target, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec in ("libx264", "h264"):
            stream.options = {"crf": str(crf), **({"preset": preset} if preset else {})}
        elif codec == "mpeg4":
            stream.codec_context.qscale = int(np.clip(crf, 1, 31))
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty uint8 array (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(
            f"frames are {width}x{height} (WxH); yuv420p needs even width and height: "
            f"crop a row/column or resize_frames(frames, ({width + width % 2}, {height + height % 2})) first"
        )
    return np.ascontiguousarray(frames)


# ----------------------------------------------------------------------------- resizing


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 frames (T, H, W, 3) to size = (width, height), PIL bilinear.

    PIL's bilinear widens its kernel when shrinking, so downscaling averages like an area
    filter instead of aliasing. About 1 ms per 340x256 frame."""
    _check_size(size)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if (frames.shape[2], frames.shape[1]) == tuple(size):
        return frames.copy()
    out = np.empty((len(frames), size[1], size[0], 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize(tuple(size), Image.BILINEAR))
    return out


def _check_size(size: tuple[int, int]) -> None:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (width, height) with both >= 1, got {size}")


# ----------------------------------------------------------------------------- to RGB


_RGB_CONVERTERS = threading.local()


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame -> (H, W, 3) uint8 RGB, through one swscale context per thread.

    `frame.to_ndarray(format="rgb24")` sets up a new swscale context for every frame,
    which costs more than converting a 340x256 frame (about 0.5 ms against 0.1 ms): a
    training window of 11 frames would spend more on set-ups than on decoding. One
    reformatter per thread keeps a cached context (swscale contexts are not thread-safe)."""
    reformatter = getattr(_RGB_CONVERTERS, "reformatter", None)
    if reformatter is None:
        reformatter = _RGB_CONVERTERS.reformatter = VideoReformatter()
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


# ----------------------------------------------------------------------------- benchmark


def _benchmark(num_frames: int = 64, width: int = 340, height: int = 256, repeats: int = 5) -> None:
    import time

    rng = np.random.default_rng(0)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)).resize(
        (width + num_frames * 2, height), Image.BICUBIC))
    frames = np.stack([base[:, 2 * t: 2 * t + width] for t in range(num_frames)])
    for codec, container in (("libx264", "mp4"), ("mpeg4", "avi")):
        data = encode_video(frames, 25.0, codec=codec, container=container, crf=5 if codec == "mpeg4" else 23)
        for threads in (0, 1):
            best = min(_timed(lambda: read_video(data, threads=threads), time) for _ in range(repeats))
            print(f"{codec}/{container} {width}x{height} x{num_frames}, threads={threads}: "
                  f"{num_frames / best:.0f} frames/s ({len(data) / 1e3:.0f} kB)")


def _timed(fn, time) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    _benchmark()
