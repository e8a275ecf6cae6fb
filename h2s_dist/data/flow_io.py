"""Optical flow files, colour coding and end-point error.

Flows here are numpy arrays (H, W, 2) float32 in pixels, channel 0 = u (right), 1 = v (down).

- Middlebury `.flo`: float32 magic 202021.25 ("PIEH"), int32 width, int32 height, then
  u, v interleaved row by row, all little endian. Values above 1e9 in magnitude mean
  "unknown"; `read_flo` returns them as NaN and `average_epe` skips non-finite ground truth.
- KITTI flow PNG: 16-bit RGB, R = u, G = v, B = valid, value = flow * 64 + 2**15. Decoded
  and encoded here with zlib (no OpenCV needed; PIL cannot read 16-bit RGB); an OpenCV
  reader is used when cv2 happens to be installed because it is faster.
- `flow_to_color`: the Middlebury colour wheel (55 colours); +u is red, +v (down) orange.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import BinaryIO, Union

import numpy as np

FLO_MAGIC = 202021.25
UNKNOWN_FLOW_THRESHOLD = 1e9
_UNKNOWN_FLOW_VALUE = 1e10  # what write_flo stores for NaN entries
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FlowSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


# ----------------------------------------------------------------------------- .flo


def read_flo(source: FlowSource) -> np.ndarray:
    """Read a Middlebury .flo (path, bytes or binary file) -> (H, W, 2) float32.
    Unknown entries (|value| > 1e9) come back as NaN in both channels."""
    data = _read_bytes(source)
    if len(data) < 12 or struct.unpack("<f", data[:4])[0] != FLO_MAGIC:
        raise ValueError(f"not a .flo file: magic {data[:4]!r} is not 202021.25 ('PIEH')")
    width, height = struct.unpack("<ii", data[4:12])
    if width < 1 or height < 1 or len(data) != 12 + 8 * width * height:
        raise ValueError(
            f".flo header says {width}x{height} (needs {12 + 8 * max(width, 0) * max(height, 0)} bytes), "
            f"file has {len(data)} bytes: truncated or corrupt")
    flow = np.frombuffer(data, "<f4", offset=12).reshape(height, width, 2).astype(np.float32)
    unknown = (np.abs(flow) > UNKNOWN_FLOW_THRESHOLD).any(axis=-1)
    flow[unknown] = np.nan
    return flow


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Write (H, W, 2) flow as Middlebury .flo; NaN or inf entries are stored as unknown (1e10)."""
    with open(path, "wb") as fh:
        fh.write(encode_flo(flow))


def encode_flo(flow: np.ndarray) -> bytes:
    """The bytes of a .flo file for (H, W, 2) flow."""
    flow = _check_flow(flow).astype("<f4")
    flow[~np.isfinite(flow).all(axis=-1)] = _UNKNOWN_FLOW_VALUE
    height, width = flow.shape[:2]
    return struct.pack("<fii", FLO_MAGIC, width, height) + flow.tobytes()


# ----------------------------------------------------------------------------- KITTI


def read_kitti_flow(source: FlowSource) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI flow PNG -> (flow (H, W, 2) float32, valid (H, W) bool); invalid pixels get 0 flow."""
    rgb = _read_png16_rgb(source)
    flow = (rgb[..., :2].astype(np.float32) - 2**15) / 64.0
    valid = rgb[..., 2] > 0
    flow[~valid] = 0.0
    return flow, valid


def write_kitti_flow(path: str | os.PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write (H, W, 2) flow and an (H, W) valid mask (default: all valid) as a KITTI 16-bit PNG.
    Flow is rounded to 1/64 px and clipped to about +-512 px, the format's range."""
    flow = _check_flow(flow)
    valid = np.ones(flow.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != flow.shape[:2]:
        raise ValueError(f"valid mask {valid.shape} must match the flow's (H, W) = {flow.shape[:2]}")
    rgb = np.empty(flow.shape[:2] + (3,), np.uint16)
    rgb[..., :2] = np.clip(np.rint(np.nan_to_num(flow) * 64.0 + 2**15), 0, 2**16 - 1)
    rgb[..., :2][~valid] = 2**15
    rgb[..., 2] = valid
    with open(path, "wb") as fh:
        fh.write(encode_png16_rgb(rgb))


def encode_png16_rgb(rgb: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (filter type 0 on every row) from a (H, W, 3) uint16 array."""
    height, width = rgb.shape[:2]
    rows = np.ascontiguousarray(rgb.astype(">u2")).view(np.uint8).reshape(height, width * 6)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return _PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _read_png16_rgb(source: FlowSource) -> np.ndarray:
    data = _read_bytes(source)
    try:
        import cv2  # optional extra: libpng is ~10x faster than the Python unfilter below
    except ImportError:
        return decode_png16_rgb(data)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        return decode_png16_rgb(data)  # raises with a message saying what is wrong
    return bgr[..., ::-1]  # OpenCV gives B, G, R


def decode_png16_rgb(data: bytes) -> np.ndarray:
    """Decode a non-interlaced 16-bit RGB PNG with zlib -> (H, W, 3) uint16. Pure numpy/Python."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("PNG has no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 16 or colour != 2 or interlace:
        raise ValueError(f"KITTI flow needs a 16-bit RGB non-interlaced PNG, got depth {depth}, "
                         f"colour type {colour}, interlace {interlace}")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    stride = width * 6
    if raw.size != height * (stride + 1):
        raise ValueError(f"PNG data is {raw.size} bytes, expected {height * (stride + 1)}: truncated")
    rows = _unfilter(raw.reshape(height, stride + 1), bpp=6)
    return rows.reshape(height, width, 3, 2).view(">u2")[..., 0].astype(np.uint16)


def _unfilter(filtered: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG row filters (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth); rows (H, 1 + stride) uint8."""
    height, stride = filtered.shape[0], filtered.shape[1] - 1
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = filtered[y, 0], filtered[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: running sum per byte lane, mod 256
            cur = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).ravel()
        elif kind == 2:
            cur = line + prev
        elif kind in (3, 4):
            cur = _unfilter_sequential(line, prev, bpp, paeth=kind == 4)
        else:
            raise ValueError(f"PNG row {y} has unknown filter type {kind}")
        out[y] = prev = cur
    return out


def _unfilter_sequential(line: np.ndarray, prev: np.ndarray, bpp: int, *, paeth: bool) -> np.ndarray:
    """Average and Paeth depend on the byte just decoded to the left, so go byte by byte."""
    cur = bytearray(line.tobytes())
    up = prev.tobytes()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = up[i]
        if paeth:
            c = up[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        else:
            pred = (a + b) >> 1
        cur[i] = (cur[i] + pred) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


# ----------------------------------------------------------------------------- visualisation


def make_colorwheel() -> np.ndarray:
    """The Middlebury colour wheel: (55, 3) float RGB in 0..255, segments RY 15, YG 6, GC 4,
    CB 11, BM 13, MR 6 (red -> yellow -> green -> cyan -> blue -> magenta -> red)."""
    segments = ((15, (255, 0, 0), 1), (6, (255, 255, 0), 0), (4, (0, 255, 0), 2),
                (11, (0, 255, 255), 1), (13, (0, 0, 255), 0), (6, (255, 0, 255), 2))
    rows = []
    for count, start, channel in segments:
        ramp = np.floor(255 * np.arange(count) / count)
        block = np.tile(np.array(start, float), (count, 1))
        # Each segment moves one channel: up from 0 if it starts at 0, down from 255 otherwise.
        block[:, channel] = ramp if start[channel] == 0 else 255 - ramp
        rows.append(block)
    return np.concatenate(rows)


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8 RGB, Middlebury coding: hue = direction, saturation =
    magnitude / max_flow (default: the largest finite magnitude). Zero flow is white; flow
    longer than max_flow is darkened (x0.75); unknown (non-finite) flow is black."""
    flow = _check_flow(flow).astype(np.float64)
    unknown = ~np.isfinite(flow).all(axis=-1)
    u, v = np.where(unknown, 0, flow[..., 0]), np.where(unknown, 0, flow[..., 1])
    rad = np.hypot(u, v)
    scale = float(rad.max()) if max_flow is None else float(max_flow)
    if scale <= 0:
        scale = 1.0
    rad = rad / scale
    wheel = make_colorwheel() / 255.0
    ncols = len(wheel)
    # Angle of the flow measured from +u towards +v, in [0, 2 pi): equals Middlebury's
    # (atan2(-v, -u) / pi + 1) / 2 and keeps +u on colour 0 (red) whatever the sign of a zero v.
    fk = np.mod(np.arctan2(v, u), 2 * np.pi) / (2 * np.pi) * (ncols - 1)
    k0 = np.floor(fk).astype(int) % ncols
    k1 = (k0 + 1) % ncols
    f = (fk - np.floor(fk))[..., None]
    col = (1 - f) * wheel[k0] + f * wheel[k1]
    inside = (rad <= 1)[..., None]
    col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    out = np.floor(255 * col).astype(np.uint8)
    out[unknown] = 0
    return out


# ----------------------------------------------------------------------------- metrics


def average_epe(pred, gt, valid=None, *, channel_axis: int = -1) -> float:
    """Mean end-point error sqrt(du^2 + dv^2) over valid pixels, in pixels.

    pred, gt: numpy arrays or torch tensors of the same shape with a 2-channel (u, v) axis at
    `channel_axis` (-1 for (..., H, W, 2) numpy flows; pass 1 for torch (B, 2, H, W)).
    valid: optional boolean mask of that shape without the channel axis. Pixels where gt is
    not finite (unknown in a .flo) are always excluded."""
    pred, gt = _to_numpy(pred).astype(np.float64), _to_numpy(gt).astype(np.float64)
    if pred.shape != gt.shape or pred.shape[channel_axis] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must match with 2 channels at axis {channel_axis}")
    epe = np.sqrt(((pred - gt) ** 2).sum(axis=channel_axis))
    mask = np.isfinite(gt).all(axis=channel_axis)
    if valid is not None:
        valid = _to_numpy(valid).astype(bool)
        if valid.shape != epe.shape:
            raise ValueError(f"valid mask {valid.shape} must match the flow without its channel axis {epe.shape}")
        mask &= valid
    if not mask.any():
        raise ValueError("average_epe: no valid pixel (all masked out or unknown)")
    return float(epe[mask].mean())


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; no torch import needed here
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------- helpers


def _check_flow(flow: np.ndarray) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be (H, W, 2) with u, v last, got shape {flow.shape}")
    return flow.astype(np.float32)


def _read_bytes(source: FlowSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return fh.read()
    if isinstance(source, io.IOBase) or hasattr(source, "read"):
        return source.read()
    raise ValueError(f"need a path, bytes or a binary file, got {type(source).__name__}")
