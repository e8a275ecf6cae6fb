"""The "h264" clip encoding: an H.264 stream with a short GOP and a frame index, so that a
window decodes from the keyframe before it, whatever the video's length.

    payload = encode_h264_stream(frames, fps=25.0, crf=23)      # b"H2SV..."
    clip = decode_h264_window(payload, start=40, length=11)      # (11, H, W, 3) uint8 RGB

A window [s, s + L) costs decoding frames k..s+L-1, k the last keyframe <= s: at most
L + GOP - 1 frames (18 for the paper's 11 frames and GOP 8), never frames 0..s as a plain
mp4 would. libx264 options, measured on the real clips by bench/data_feed.py
(docs/data.md): `tune=fastdecode` (CAVLC, no deblocking: ~2x cheaper to decode), no
B-frames (decode order = display order, so frame t is packet t), a keyframe every
`gop_frames` frames exactly (`scenecut=0`), SPS/PPS repeated before every keyframe (a
fresh decoder can start at any keyframe), preset veryfast (2x faster to encode than
medium for the same size at this frame size).

"H2SV" version 1, all integers little-endian:
  offset 0   4s   magic b"H2SV"
         4   B    version (1)
         5   3x   reserved (zero)
         8   I    num_frames T
        12   I    width W of the frames (the stream is padded to even sizes, see below)
        16   I    height H
        20   I    num_keyframes K
        24   (T+1) x I   offsets of each frame's access unit from the end of the tables;
                  frame t is stream[offsets[t]:offsets[t+1]]
             K x I       keyframe indices, ascending, the first 0
  then the H.264 Annex-B stream (`payload[stream_start:]` plays as a raw .h264 file).
yuv420p needs even sizes: an odd W or H is padded by repeating the last column/row before
encoding and cropped again after decoding, so the frames keep their size.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from h2s_dist.data.video import frame_to_rgb

DEFAULT_GOP_FRAMES = 8
DEFAULT_CRF = 23
DEFAULT_PRESET = "veryfast"

_MAGIC = b"H2SV"
_VERSION = 1
_HEADER = struct.Struct("<4sB3xIIII")


class H264StreamError(ValueError):
    """A payload that is not a valid H2SV stream, or a window it cannot give."""


@dataclass(frozen=True)
class StreamIndex:
    """The parsed tables of an H2SV payload. offsets: (T+1,) int64 byte offsets of each
    frame's access unit from `stream_start`; keyframes: ascending frame indices."""

    num_frames: int
    width: int
    height: int
    offsets: np.ndarray
    keyframes: list[int]
    stream_start: int

    def keyframe_before(self, frame: int) -> int:
        """The last keyframe <= frame: where a decoder must start to reach `frame`."""
        return self.keyframes[bisect.bisect_right(self.keyframes, frame) - 1]


# ----------------------------------------------------------------------------- encode


def encode_h264_stream(
    frames: np.ndarray, fps: float, crf: int = DEFAULT_CRF, gop_frames: int = DEFAULT_GOP_FRAMES,
    preset: str = DEFAULT_PRESET, tune: str | None = "fastdecode",
) -> bytes:
    """frames (T, H, W, 3) uint8 RGB -> an "H2SV" payload (see the module docstring).

    crf: x264 constant rate factor (0..51, lower is better); gop_frames: a keyframe every
    this many frames; preset, tune: libx264's (tune None = x264's default decoding cost)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty uint8 array (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if not 0 <= crf <= 51 or gop_frames < 1 or not fps > 0:
        raise ValueError(f"need crf in 0..51, gop_frames >= 1, fps > 0; got {crf}, {gop_frames}, {fps}")
    height, width = frames.shape[1:3]
    padded = _pad_even(frames)
    packets = _x264_packets(padded, fps, crf, gop_frames, preset, tune)
    if len(packets) != len(frames):  # bframes=0 gives one access unit per frame; anything else breaks the index
        raise RuntimeError(f"libx264 gave {len(packets)} packets for {len(frames)} frames")
    sizes = [len(data) for data, _ in packets]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype("<u4")
    keyframes = np.array([t for t, (_, key) in enumerate(packets) if key], "<u4")
    if len(keyframes) == 0 or keyframes[0] != 0:
        raise RuntimeError("libx264 did not start the stream with a keyframe")
    header = _HEADER.pack(_MAGIC, _VERSION, len(frames), width, height, len(keyframes))
    return b"".join([header, offsets.tobytes(), keyframes.tobytes(), *(data for data, _ in packets)])


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row / column so that H and W are even (yuv420p halves the chroma)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _x264_packets(frames: np.ndarray, fps: float, crf: int, gop_frames: int, preset: str,
                  tune: str | None) -> list[tuple[bytes, bool]]:
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height = frames.shape[2], frames.shape[1]
    context.pix_fmt = "yuv420p"
    rate = Fraction(fps).limit_denominator(1001)
    context.framerate, context.time_base = rate, 1 / rate
    params = f"keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0:bframes=0:repeat-headers=1:annexb=1"
    context.options = {"crf": str(crf), "preset": preset, **({"tune": tune} if tune else {}), "x264-params": params}
    packets: list[tuple[bytes, bool]] = []
    for t, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = t
        packets += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(frame)]
    packets += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(None)]
    return packets


# ----------------------------------------------------------------------------- decode


def read_index(payload: bytes) -> StreamIndex:
    """The tables of an H2SV payload; H264StreamError when they do not hold together."""
    if len(payload) < _HEADER.size:
        raise H264StreamError(f"H2SV payload of {len(payload)} bytes is shorter than its header")
    magic, version, num_frames, width, height, num_keyframes = _HEADER.unpack_from(payload)
    if magic != _MAGIC or version != _VERSION:
        raise H264StreamError(f"not an H2SV v{_VERSION} stream (magic {magic!r}, version {version})")
    stream_start = _HEADER.size + 4 * (num_frames + 1 + num_keyframes)
    if num_frames < 1 or num_keyframes < 1 or stream_start > len(payload):
        raise H264StreamError(f"H2SV tables of {num_frames} frames / {num_keyframes} keyframes do not fit "
                              f"{len(payload)} bytes")
    offsets = np.frombuffer(payload, "<u4", num_frames + 1, _HEADER.size).astype(np.int64)
    keyframes = np.frombuffer(payload, "<u4", num_keyframes, _HEADER.size + 4 * (num_frames + 1)).tolist()
    if (offsets[0] != 0 or stream_start + offsets[-1] != len(payload) or np.any(np.diff(offsets) <= 0)
            or keyframes[0] != 0 or keyframes[-1] >= num_frames or np.any(np.diff(keyframes) <= 0)):
        raise H264StreamError("H2SV frame offsets or keyframe indices are inconsistent (corrupt payload)")
    return StreamIndex(num_frames, width, height, offsets, keyframes, stream_start)


def decode_h264_window(payload: bytes, start: int = 0, length: int | None = None) -> np.ndarray:
    """Frames [start, start + length) of an H2SV payload -> (length, H, W, 3) uint8 RGB;
    length None = to the last frame. Decodes from the last keyframe <= start, one thread
    (many loader workers decode at once), and converts to RGB only the frames it returns."""
    index = read_index(payload)
    stop = index.num_frames if length is None else start + length
    if start < 0 or stop > index.num_frames or start >= stop:
        raise H264StreamError(f"window [{start}, {stop}) outside the clip's {index.num_frames} frames")
    first = index.keyframe_before(start)
    context = av.CodecContext.create("h264", "r")
    context.thread_count = 1
    view = memoryview(payload)[index.stream_start:]
    decoded: list[av.VideoFrame] = []
    try:
        for t in range(first, stop):
            decoded += context.decode(av.Packet(view[index.offsets[t]: index.offsets[t + 1]]))
        decoded += context.decode(None)
    except av.FFmpegError as err:
        raise H264StreamError(f"H.264 stream does not decode: {err}") from err
    if len(decoded) != stop - first:
        raise H264StreamError(f"decoding frames [{first}, {stop}) gave {len(decoded)} frames (corrupt stream)")
    out = np.empty((stop - start, index.height, index.width, 3), np.uint8)
    for i, frame in enumerate(decoded[start - first:]):
        out[i] = frame_to_rgb(frame)[: index.height, : index.width]
    return out
