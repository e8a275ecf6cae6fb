"""h2s_dist.data.flow_sets: the official layouts written to a temp folder, and the real flow dev
set in ../shared/data/flow_dev, whose ground truth must rebuild frame1 from frame2."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from h2s_dist.data import flow_sets as fs
from h2s_dist.data.flow_io import write_flo, write_kitti_flow
from tests.unit.flow_cases import H, SHIFT, W, shift_flow, shifted_pair

FLOW_DEV = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flow_dev"


# ----------------------------------------------------------------------------- Middlebury, Sintel


@pytest.fixture
def middlebury_root(tmp_path):
    for i, (name, data) in enumerate((("Alpha", "other-data"), ("Beta", "other-data-gray"))):
        frame1, frame2 = shifted_pair(i)
        folder = tmp_path / data / name
        folder.mkdir(parents=True)
        mode = "RGB" if data == "other-data" else "L"
        Image.fromarray(frame1).convert(mode).save(folder / "frame10.png")
        Image.fromarray(frame2).convert(mode).save(folder / "frame11.png")
        (tmp_path / "other-gt-flow" / name).mkdir(parents=True)
        flow = shift_flow()
        flow[0, 0] = np.nan  # one unknown pixel, stored as 1e10
        write_flo(tmp_path / "other-gt-flow" / name / "flow10.flo", flow)
    return tmp_path


@pytest.fixture
def sintel_root(tmp_path):
    for scene in ("alley_1", "bamboo_2"):
        frames = [np.random.default_rng(len(scene)).integers(0, 256, (H, W, 3), dtype=np.uint8)]
        for _ in range(2):
            frames.append(np.roll(frames[-1], (int(SHIFT[1]), int(SHIFT[0])), axis=(0, 1)))
        for render_pass in ("clean", "final"):
            (tmp_path / render_pass / scene).mkdir(parents=True)
            for k, frame in enumerate(frames, start=1):
                Image.fromarray(frame).save(tmp_path / render_pass / scene / f"frame_{k:04d}.png")
        (tmp_path / "flow" / scene).mkdir(parents=True)
        for k in (1, 2):
            write_flo(tmp_path / "flow" / scene / f"frame_{k:04d}.flo", shift_flow())
    return tmp_path


def test_middlebury_layout_gives_every_sequence_with_its_frames_and_flow(middlebury_root):
    pairs = fs.read_middlebury(middlebury_root)
    assert [p.name for p in pairs] == ["Alpha", "Beta"]
    for p in pairs:
        assert p.frame1.shape == p.frame2.shape == (H, W, 3) and p.frame1.dtype == np.uint8
        assert np.isnan(p.flow[0, 0]).all() and np.allclose(p.flow[1:], SHIFT)
    np.testing.assert_array_equal(pairs[0].frame1, shifted_pair(0)[0])


def test_sintel_layout_pairs_each_flo_with_its_two_frames(sintel_root):
    pairs = fs.read_sintel(sintel_root, "final")
    assert [p.name for p in pairs] == ["alley_1/0001", "alley_1/0002", "bamboo_2/0001", "bamboo_2/0002"]
    # frame_0002 is frame_0001 moved by SHIFT, so the pair really is frame k -> k+1.
    first = pairs[0]
    np.testing.assert_array_equal(np.roll(first.frame1, (-1, 2), axis=(0, 1)), first.frame2)
    assert len(fs.read_sintel(sintel_root, "clean", max_pairs_per_scene=1)) == 2


def test_missing_layout_folders_are_reported_with_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="other-gt-flow"):
        fs.read_middlebury(tmp_path)
    with pytest.raises(ValueError, match="flow/ and clean/"):
        fs.read_sintel(tmp_path)


# ----------------------------------------------------------------------------- flow dev layout, tiny files


@pytest.fixture
def tiny_flow_dev(tmp_path):
    """The flow_dev layout with one 20x24 pair per set (frame2 = frame1 moved by SHIFT)."""
    frame1, frame2 = shifted_pair(0)
    chairs, kitti, yos = (tmp_path / s for s in fs.FLOW_DEV_SETS)
    for folder in (chairs, kitti, yos):
        folder.mkdir()
    for stem in ("0000000", "0000001"):
        Image.fromarray(frame1).save(chairs / f"{stem}-img0.ppm")
        Image.fromarray(frame2).save(chairs / f"{stem}-img1.ppm")
        write_flo(chairs / f"{stem}-gt.flo", shift_flow())
    Image.fromarray(frame1).save(kitti / "frame1.png")
    Image.fromarray(frame2).save(kitti / "frame2.png")
    valid = np.zeros((H, W), bool)
    valid[::3, ::2] = True  # sparse, like LiDAR points
    write_kitti_flow(kitti / "flow_gt.png", shift_flow(), valid)
    Image.fromarray(frame1[..., 0]).save(yos / "yos9.png")  # grey, as the real frames
    Image.fromarray(frame2[..., 0]).save(yos / "yos10.png")
    flow = shift_flow()
    flow[:3] = fs.YOSEMITE_SKY_FLOW  # three rows of "sky"
    flow[5, 5] = np.nan  # unknown, stored as 1e10
    write_flo(yos / "correct_yos.flo", flow)
    return tmp_path


def test_flow_dev_layout_reads_every_set_with_its_valid_mask(tiny_flow_dev):
    sets = fs.read_flow_dev(tiny_flow_dev)
    assert list(sets) == ["flyingchairs", "kitti", "yosemite"]
    assert [p.name for p in sets["flyingchairs"]] == ["flyingchairs/0000000", "flyingchairs/0000001"]
    kitti, = sets["kitti"]
    assert kitti.valid.sum() == 7 * 12 and np.allclose(kitti.flow[kitti.valid], SHIFT)
    assert not kitti.flow[~kitti.valid].any()  # invalid KITTI pixels carry 0, never used
    yos, = sets["yosemite"]
    assert yos.frame1.shape == (H, W, 3) and (yos.frame1[..., 0] == yos.frame1[..., 2]).all()
    assert not yos.valid[:3].any() and yos.valid[3:].sum() == (H - 3) * W
    assert np.isnan(yos.flow[5, 5]).all()
    assert fs.read_yosemite(tiny_flow_dev / "yosemite", include_sky=True)[0].valid is None


@pytest.mark.parametrize("missing, message", [
    ("kitti/flow_gt.png", "kitti/flow_gt.png is missing"),
    ("yosemite/yos10.png", "yosemite/yos10.png is missing"),
    ("flyingchairs/0000001-img1.ppm", "0000001-img1.ppm is missing"),
])
def test_a_missing_flow_dev_file_is_named(tiny_flow_dev, missing, message):
    (tiny_flow_dev / missing).unlink()
    with pytest.raises(ValueError, match=message):
        fs.read_flow_dev(tiny_flow_dev)


def test_missing_flow_dev_folders_and_mismatched_files_are_reported(tiny_flow_dev):
    with pytest.raises(ValueError, match="is not a folder"):
        fs.read_flow_dev(tiny_flow_dev / "nowhere")
    with pytest.raises(ValueError, match="unknown flow dev sets"):
        fs.read_flow_dev(tiny_flow_dev, sets=("sintel",))
    write_flo(tiny_flow_dev / "yosemite" / "correct_yos.flo", np.zeros((H + 1, W, 2), np.float32))
    with pytest.raises(ValueError, match="must share"):
        fs.read_yosemite(tiny_flow_dev / "yosemite")
    for f in (tiny_flow_dev / "flyingchairs").glob("*.flo"):
        f.unlink()
    with pytest.raises(ValueError, match="no NNNNNNN-gt.flo"):
        fs.read_flow_dev(tiny_flow_dev)
    (tiny_flow_dev / "kitti").rename(tiny_flow_dev / "kitti_elsewhere")
    with pytest.raises(ValueError, match="kitti is missing"):
        fs.read_flow_dev(tiny_flow_dev)


# ----------------------------------------------------------------------------- resizing


def test_resizing_scales_the_flow_and_keeps_sparse_points_unblended():
    frame1, frame2 = shifted_pair(0)
    valid = np.zeros((H, W), bool)
    valid[1::2, 1::2] = True
    flow = np.where(valid[..., None], shift_flow(), 0).astype(np.float32)
    pair = fs.FlowPair("p", frame1, frame2, flow, valid)
    small = fs.resize_pair(pair, 12)  # 24 x 20 -> 12 x 10: factor 1/2 on both axes
    assert small.frame1.shape == (10, 12, 3) and small.frame1.dtype == np.uint8
    assert small.scale == (0.5, 0.5) and small.valid.all()  # resized centres (i + 0.5) * 2 fall in the odd samples
    np.testing.assert_allclose(small.flow, np.broadcast_to([1.0, -0.5], (10, 12, 2)))
    np.testing.assert_allclose(small.flow / np.array(small.scale), pair.flow[1::2, 1::2])
    assert fs.resize_pair(pair, 24) is pair and fs.resize_pair(pair, None) is pair


# ----------------------------------------------------------------------------- the real flow dev set


@pytest.fixture(scope="module")
def flow_dev() -> dict[str, list[fs.FlowPair]]:
    if not FLOW_DEV.is_dir():
        pytest.skip(f"{FLOW_DEV} not present (an outside clone has no ../shared)")
    return fs.read_flow_dev(FLOW_DEV)


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(H, W, C) image read bilinearly at float points (x, y) inside it -> (N, C) float32."""
    h, w = image.shape[:2]
    x0, y0 = np.minimum(x.astype(int), w - 2), np.minimum(y.astype(int), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float32)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _photometric_error(pair: fs.FlowPair, flow: np.ndarray, stride: int = 2) -> float:
    """Mean |frame1(x) - frame2(x + flow(x))| (backward warping, as h2s_dist.warp.backward_warp;
    numpy here, no torch threads to fight over on a shared CPU) over every `stride`-th row and
    column of the valid pixels whose ground-truth sample lands inside frame2: the same pixels
    for every `flow` compared. Samples of other flows are clamped to the border."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[:h:stride, :w:stride]
    gt = pair.flow[::stride, ::stride]
    mask = np.isfinite(gt).all(-1) & (pair.valid[::stride, ::stride] if pair.valid is not None else True)
    mask &= (xs + gt[..., 0] >= 0) & (xs + gt[..., 0] <= w - 1) & (ys + gt[..., 1] >= 0) & (ys + gt[..., 1] <= h - 1)
    u, v = flow[::stride, ::stride][mask].T
    x, y = np.clip(xs[mask] + u, 0, w - 1), np.clip(ys[mask] + v, 0, h - 1)
    return float(np.abs(_sample(pair.frame2, x, y) - pair.frame1[ys[mask], xs[mask]]).mean())


def test_numpy_warp_oracle_recovers_an_integer_shift():
    frame1, frame2 = shifted_pair(0)
    pair = fs.FlowPair("p", frame1, frame2, shift_flow())
    assert _photometric_error(pair, shift_flow(), stride=1) == 0.0
    assert _photometric_error(pair, np.zeros((H, W, 2)), stride=1) > 50


def test_real_flow_dev_sets_have_their_shapes_and_dtypes(flow_dev):
    sizes = {"flyingchairs": (9, (384, 512)), "kitti": (1, (375, 1242)), "yosemite": (1, (252, 316))}
    for name, (count, hw) in sizes.items():
        assert len(flow_dev[name]) == count, name
        for p in flow_dev[name]:
            assert p.frame1.shape == p.frame2.shape == hw + (3,) and p.frame1.dtype == np.uint8, p.name
            assert p.flow.shape == hw + (2,) and p.flow.dtype == np.float32, p.name
            assert p.window is None and p.scale == (1.0, 1.0)
    assert all(p.valid is None and np.isfinite(p.flow).all() for p in flow_dev["flyingchairs"])
    kitti, yos = flow_dev["kitti"][0], flow_dev["yosemite"][0]
    assert 0.1 < kitti.valid.mean() < 0.3  # sparse LiDAR ground truth
    assert 0.2 < 1 - yos.valid.mean() < 0.35 and not yos.valid[:55].any() and yos.valid[80:].all()  # the sky


@pytest.mark.parametrize("name", ["flyingchairs", "kitti", "yosemite"])
def test_real_ground_truth_warps_frame2_onto_frame1(flow_dev, name):
    """The direction check: frame2 sampled at x + gt rebuilds frame1 better than with zero flow
    and than with the negated flow (which would win if the file held flow frame2 -> frame1)."""
    for pair in flow_dev[name]:
        gt = _photometric_error(pair, pair.flow)
        zero = _photometric_error(pair, np.zeros_like(pair.flow))
        negated = _photometric_error(pair, -pair.flow)
        assert gt < 0.7 * zero and gt < 0.7 * negated, (pair.name, gt, zero, negated)


def test_flow_sets_import_no_torch():
    code = "import h2s_dist.data.flow_sets, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
