"""Flow files (.flo, KITTI PNG), the Middlebury colour coding and end-point error, against oracles."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from h2s_dist.data import flow_io
from h2s_dist.data.flow_io import (
    average_epe,
    decode_png16_rgb,
    encode_flo,
    flow_to_color,
    make_colorwheel,
    read_flo,
    read_kitti_flow,
    write_flo,
    write_kitti_flow,
)


@pytest.fixture
def flow() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 5, (7, 9, 2)).astype(np.float32)


def test_flo_roundtrip_is_exact_from_path_and_bytes(flow, tmp_path):
    write_flo(tmp_path / "a.flo", flow)
    assert np.array_equal(read_flo(tmp_path / "a.flo"), flow)
    data = (tmp_path / "a.flo").read_bytes()
    assert data[:4] == b"PIEH" and struct.unpack("<ii", data[4:12]) == (9, 7)  # width, then height
    assert np.array_equal(read_flo(data), flow)


def test_flo_with_a_wrong_magic_or_length_is_refused(flow):
    data = encode_flo(flow)
    with pytest.raises(ValueError, match="202021.25"):
        read_flo(b"XXXX" + data[4:])
    with pytest.raises(ValueError, match="truncated"):
        read_flo(data[:-4])


def test_flo_unknown_values_read_as_nan_and_are_skipped_by_epe(flow):
    flow[2, 3] = (1e10, 0.0)
    flow[4, 4] = np.nan  # written as unknown
    read = read_flo(encode_flo(flow))
    assert np.isnan(read[2, 3]).all() and np.isnan(read[4, 4]).all()
    assert np.isfinite(read).sum() == read.size - 4
    assert average_epe(np.zeros_like(read), read) == pytest.approx(
        np.hypot(read[..., 0], read[..., 1])[np.isfinite(read[..., 0])].mean())


@pytest.mark.parametrize("use_cv2", [False, True])
def test_kitti_roundtrip_keeps_flow_to_1_64_px_and_the_mask(flow, tmp_path, monkeypatch, use_cv2):
    if use_cv2:
        pytest.importorskip("cv2")
    else:
        monkeypatch.setitem(__import__("sys").modules, "cv2", None)  # import cv2 -> ImportError
    valid = np.ones(flow.shape[:2], bool)
    valid[1, ::2] = False
    write_kitti_flow(tmp_path / "f.png", flow, valid)
    got, got_valid = read_kitti_flow(tmp_path / "f.png")
    assert np.array_equal(got_valid, valid)
    assert np.abs(got - flow)[valid].max() <= 0.5 / 64 + 1e-6
    assert not got[~valid].any()


def test_png_decoder_reads_a_real_libpng_file():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    ramp = np.cumsum(rng.integers(0, 300, (40, 50, 3)), axis=1)
    rgb = np.clip(ramp + rng.integers(0, 5000, (40, 1, 3)), 0, 65535).astype(np.uint16)
    ok, png = cv2.imencode(".png", rgb[..., ::-1].copy())
    assert ok
    assert np.array_equal(decode_png16_rgb(png.tobytes()), rgb)


def _filter_row(kind: int, row: bytes, prev: bytes, bpp: int = 6) -> bytes:
    """PNG row filter straight from the spec (section 9), byte by byte: the oracle for the decoder."""
    out = bytearray()
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        paeth = min((abs(p - a), 0, a), (abs(p - b), 1, b), (abs(p - c), 2, c))[2]
        pred = (0, a, b, (a + b) // 2, paeth)[kind]
        out.append((x - pred) % 256)
    return bytes([kind]) + bytes(out)


def test_png_decoder_undoes_each_of_the_five_filters():
    rng = np.random.default_rng(3)
    rgb = np.clip(np.cumsum(rng.integers(0, 3000, (10, 6, 3)), axis=1), 0, 65535).astype(np.uint16)
    rows = rgb.astype(">u2").view(np.uint8).reshape(10, -1)
    raw, prev = b"", bytes(rows.shape[1])
    for y, row in enumerate(rows):
        raw += _filter_row(y % 5, row.tobytes(), prev)
        prev = row.tobytes()
    header = flow_io.encode_png16_rgb(rgb)
    idat_at = header.index(b"IDAT") - 4
    png = header[:idat_at] + flow_io._chunk(b"IDAT", zlib.compress(raw)) + flow_io._chunk(b"IEND", b"")
    assert np.array_equal(decode_png16_rgb(png), rgb)


def test_kitti_channels_are_u_v_valid_in_png_order(tmp_path):
    write_kitti_flow(tmp_path / "f.png", np.array([[[1.0, -2.0]]]), np.array([[True]]))
    rgb = decode_png16_rgb((tmp_path / "f.png").read_bytes())
    assert rgb[0, 0].tolist() == [2**15 + 64, 2**15 - 128, 1]


def test_colorwheel_has_the_middlebury_segments():
    wheel = make_colorwheel()
    assert wheel.shape == (55, 3)
    # Segment starts: red, yellow, green, cyan, blue, magenta at 0, 15, 21, 25, 36, 49.
    for index, colour in ((0, (255, 0, 0)), (15, (255, 255, 0)), (21, (0, 255, 0)),
                          (25, (0, 255, 255)), (36, (0, 0, 255)), (49, (255, 0, 255))):
        assert wheel[index].tolist() == list(colour)


def test_zero_flow_is_white_and_pure_u_is_the_wheel_colour_at_angle_0():
    assert (flow_to_color(np.zeros((2, 3, 2))) == 255).all()
    right = np.zeros((1, 2, 2))
    right[0, :, 0] = (1.0, 2.0)  # the longest sets the scale: full saturation
    colours = flow_to_color(right)
    assert colours[0, 1].tolist() == [255, 0, 0]
    assert colours[0, 0].tolist() == [255, 127, 127]  # half-way to white
    assert flow_to_color(right, max_flow=1.0)[0, 1].tolist() == [191, 0, 0]  # beyond max_flow: darkened


def test_epe_oracles():
    gt = np.random.default_rng(2).normal(size=(4, 5, 2))
    assert average_epe(gt, gt) == 0.0
    assert average_epe(gt + np.array([3.0, 4.0]), gt) == pytest.approx(5.0)
    pred = gt.copy()
    pred[0, 0] += (30.0, 40.0)  # error 50 on a single pixel
    valid = np.ones((4, 5), bool)
    assert average_epe(pred, gt) == pytest.approx(50.0 / 20)
    valid[0, 0] = False
    assert average_epe(pred, gt, valid) == 0.0
    with pytest.raises(ValueError, match="no valid pixel"):
        average_epe(pred, gt, np.zeros((4, 5), bool))


def test_epe_accepts_torch_channels_first():
    torch = pytest.importorskip("torch")
    gt = torch.zeros(2, 2, 3, 4)
    pred = gt.clone()
    pred[:, 0] += 3.0
    pred[:, 1] += 4.0
    assert average_epe(pred, gt, channel_axis=1) == pytest.approx(5.0)
    assert average_epe(pred, gt, torch.ones(2, 3, 4, dtype=torch.bool), channel_axis=1) == pytest.approx(5.0)


def test_module_does_not_import_torch_ray_or_mlflow():
    import subprocess
    import sys

    code = ("import sys, h2s_dist.data.flow_io, h2s_dist.data.video, h2s_dist.data.synthetic; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert flow_io.FLO_MAGIC == 202021.25
