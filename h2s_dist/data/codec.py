"""How a clip is stored in a shard sample, and the one place that decodes it again.

Three encodings (docs/data.md has the measurements behind the default):
  "h264"  member "<key>.h264s": H.264 with a keyframe every 8 frames and a frame index
          ("H2SV", h2s_dist.data.h264_stream); a window decodes from the keyframe before
          it, so its cost does not grow with the video. Default: 0.56x the source bytes
          on the real clips and 1.4x JPEG's windows per core (bench/data_feed.py).
  "jpeg"  member "<key>.jpgs": a JPEG frame stack (format below); any window decodes
          only its own frames. 5x the source bytes on the real clips.
  "mp4"   member "<key>.mp4": H.264 in mp4 (libx264, `crf`, x264's GOP of 250); the
          smallest, but a window at frame s costs decoding frames 0..s+length. Kept so
          that datasets written with it still read.

JPEG frame stack ("H2SJ" version 1), all integers little-endian:
  offset 0   4s   magic b"H2SJ"
         4   B    version (1)
         5   3x   reserved (zero)
         8   I    num_frames T
        12   I    width
        16   I    height
        20   (T+1) x I   offsets of each JPEG from the end of this table; JPEG t is
                  data[offsets[t]:offsets[t+1]], so one frame is a slice, no scanning.
  then the T JPEG files back to back (baseline, 4:2:0, PIL / libjpeg-turbo).

    ext, payload = encode_frames(frames, fps=25.0, encoding="jpeg")   # ("jpgs", b"H2SJ...")
    clip = decode_frames({"jpgs": payload, "json": meta_bytes}, start=40, length=11)  # (11, H, W, 3)
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from typing import Any

import av
import numpy as np
from PIL import Image

from h2s_dist.data import h264_stream
from h2s_dist.data.ingest_defaults import DEFAULT_ENCODING, ENCODINGS  # noqa: F401 (codec.ENCODINGS is public)
from h2s_dist.data.video import encode_video, frame_to_rgb

EXTENSIONS = {"h264": "h264s", "mp4": "mp4", "jpeg": "jpgs"}  # encoding -> sample member extension
DEFAULT_QUALITY = {"h264": h264_stream.DEFAULT_CRF, "mp4": 23, "jpeg": 90}  # h264/mp4: x264 CRF (lower = better); jpeg: 1..95

_MAGIC = b"H2SJ"
_VERSION = 1
_HEADER = struct.Struct("<4sB3xIII")
# Decoding runs inside many data-loader workers: one thread each keeps cores for the others.
DECODE_THREADS = 1


class ClipDecodeError(ValueError):
    """A stored sample that cannot give the asked frames (corrupt payload, window too long)."""


# ----------------------------------------------------------------------------- encode


def encode_frames(
    frames: np.ndarray, fps: float, encoding: str = DEFAULT_ENCODING, quality: int | None = None
) -> tuple[str, bytes]:
    """frames (T, H, W, 3) uint8 RGB -> (member extension, payload bytes).

    quality: h264, mp4 -> x264 CRF (default 23; 0..51, lower is better); jpeg -> JPEG quality
    (default 90; 1..95). H and W must be even for mp4 (yuv420p); h264 pads and crops back."""
    check_encoding(encoding)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty uint8 array (T, H, W, 3), got {frames.dtype} {frames.shape}")
    q = DEFAULT_QUALITY[encoding] if quality is None else int(quality)
    if encoding == "h264":
        return EXTENSIONS["h264"], h264_stream.encode_h264_stream(frames, fps, crf=q)
    if encoding == "mp4":
        return EXTENSIONS["mp4"], encode_video(frames, fps, codec="libx264", crf=q)
    return EXTENSIONS["jpeg"], encode_jpeg_stack(frames, quality=q)


def encode_jpeg_stack(frames: np.ndarray, quality: int = DEFAULT_QUALITY["jpeg"]) -> bytes:
    """frames (T, H, W, 3) uint8 RGB -> an "H2SJ" JPEG frame stack (see module docstring)."""
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
    jpegs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=quality)
        jpegs.append(buf.getvalue())
    offsets = np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).astype("<u4")
    height, width = frames.shape[1:3]
    header = _HEADER.pack(_MAGIC, _VERSION, len(jpegs), width, height)
    return b"".join([header, offsets.tobytes(), *jpegs])


# ----------------------------------------------------------------------------- decode


def check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {ENCODINGS}")
    return encoding


def sample_meta(sample: Mapping[str, Any]) -> dict:
    """The sample's parsed "json" member (bytes, str or an already parsed dict)."""
    raw = _member(sample, "json")
    if raw is None:
        raise ClipDecodeError(f"sample {sample.get('__key__', '?')} has no json member")
    return raw if isinstance(raw, dict) else json.loads(raw)


def decode_frames(sample: Mapping[str, Any], start: int = 0, length: int | None = None) -> np.ndarray:
    """The frames [start, start + length) of a webdataset sample -> (length, H, W, 3) uint8 RGB.

    sample: raw member bytes under "h264s", "jpgs" or "mp4" (a leading "." is accepted),
    plus "json" (needed by mp4 only). length None -> to the last frame. jpeg decodes only
    the window; h264 decodes from the last keyframe <= start (at most 7 frames more);
    mp4 decodes from frame 0 up to start + length and stops.
    """
    if start < 0 or (length is not None and length < 1):
        raise ValueError(f"need start >= 0 and length >= 1, got start={start}, length={length}")
    stream = _member(sample, "h264s")
    if stream is not None:
        try:
            return h264_stream.decode_h264_window(stream, start, length)
        except h264_stream.H264StreamError as err:
            raise ClipDecodeError(str(err)) from err
    jpgs = _member(sample, "jpgs")
    if jpgs is not None:
        return _decode_jpeg_window(jpgs, start, length)
    mp4 = _member(sample, "mp4")
    if mp4 is not None:
        total = int(sample_meta(sample)["num_frames"]) if _member(sample, "json") is not None else None
        if length is None:
            if total is None:
                raise ClipDecodeError("an mp4 sample without json needs an explicit length")
            length = total - start
        return _decode_mp4_window(mp4, start, length, total)
    raise ClipDecodeError(f"sample {sample.get('__key__', '?')} has no 'h264s', 'jpgs' or 'mp4' member")


def jpeg_stack_info(payload: bytes) -> tuple[int, int, int]:
    """(num_frames, width, height) from an "H2SJ" header."""
    if len(payload) < _HEADER.size:
        raise ClipDecodeError(f"JPEG stack of {len(payload)} bytes is shorter than its header")
    magic, version, num_frames, width, height = _HEADER.unpack_from(payload)
    if magic != _MAGIC or version != _VERSION:
        raise ClipDecodeError(f"not an H2SJ v{_VERSION} JPEG stack (magic {magic!r}, version {version})")
    return num_frames, width, height


def _decode_jpeg_window(payload: bytes, start: int, length: int | None) -> np.ndarray:
    num_frames, width, height = jpeg_stack_info(payload)
    stop = num_frames if length is None else start + length
    if stop > num_frames or start >= num_frames:
        raise ClipDecodeError(f"window [{start}, {stop}) outside the clip's {num_frames} frames")
    table = _HEADER.size
    offsets = np.frombuffer(payload, dtype="<u4", count=num_frames + 1, offset=table)
    data = table + 4 * (num_frames + 1)
    view = memoryview(payload)
    out = np.empty((stop - start, height, width, 3), np.uint8)
    for i, t in enumerate(range(start, stop)):
        jpeg = view[data + int(offsets[t]): data + int(offsets[t + 1])]
        with Image.open(io.BytesIO(jpeg)) as image:
            out[i] = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    return out


def _decode_mp4_window(payload: bytes, start: int, length: int, total: int | None) -> np.ndarray:
    stop = start + length
    if total is not None and stop > total:
        raise ClipDecodeError(f"window [{start}, {stop}) outside the clip's {total} frames")
    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(payload), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_count = DECODE_THREADS
            for index, frame in enumerate(container.decode(stream)):
                if index >= start:
                    # Convert only the frames we keep: rgb conversion costs as much as decoding.
                    frames.append(frame_to_rgb(frame))
                if index + 1 >= stop:
                    break
    except (av.FFmpegError, IndexError) as err:
        raise ClipDecodeError(f"mp4 payload does not decode: {err}") from err
    if len(frames) < length:
        raise ClipDecodeError(f"window [{start}, {stop}) needs {stop} frames, the mp4 has {start + len(frames)}")
    return np.stack(frames)


def _member(sample: Mapping[str, Any], ext: str) -> Any:
    if ext in sample:
        return sample[ext]
    return sample.get("." + ext)
