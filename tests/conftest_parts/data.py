"""Data fixtures: small generated videos on disk and ingested synthetic datasets.

    def test_x(video_folder): ...             # ROOT/<ClassName>/v_<ClassName>_gXX_c01.avi, 18 videos
    def test_y(ucf101_mini): root, splits = ucf101_mini   # named after tests/data/ucf101_splits
    def test_z(synthetic_dataset_uri): ...    # an ingested dataset URI (jpeg, 64x48, 4 shards)
    def test_w(make_synthetic_dataset): uri = make_synthetic_dataset(encoding="mp4")
    copy_with_corrupt_samples(uri, tmp_path, victims)   # a copy whose victims' frames are garbage

Session-scoped: build once, treat as read-only (copy before changing anything).
"""

from __future__ import annotations

import io
import pathlib
import tarfile
from collections.abc import Callable, Iterable

import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]
UCF_SPLITS = TESTS / "data" / "ucf101_splits"
HMDB_SPLITS = TESTS / "data" / "hmdb51_splits"

# Tiny on purpose: every video encodes and decodes in milliseconds.
TINY_VIDEO = {"num_frames": 16, "height": 48, "width": 64}


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory) -> pathlib.Path:
    """18 synthetic videos (2 per class, 16 frames, 64x48, x264 avi) in UCF101 layout."""
    from h2s_dist.data.synthetic import SyntheticMotionConfig, write_dataset

    root = tmp_path_factory.mktemp("videos")
    write_dataset(root, SyntheticMotionConfig(num_videos=18, seed=1, **TINY_VIDEO), ext=".avi", layout="ucf101")
    return root


@pytest.fixture(scope="session")
def ucf101_mini(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(root, splits_dir): tiny videos named after tests/data/ucf101_splits entries.

    On disk: 7 of the 9 listed videos (g09_c02 and HandStandPushups g01_c01 are missing)
    plus v_ApplyEyeMakeup_g99_c01, which no list names."""
    from h2s_dist.data.synthetic import SyntheticMotionConfig, make_video
    from h2s_dist.data.video import write_video

    listed = sorted({
        line.split()[0]
        for name in ("trainlist01.txt", "testlist01.txt")
        for line in (UCF_SPLITS / name).read_text().splitlines() if line.strip()
    })
    absent = {"ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c02.avi", "HandstandPushups/v_HandStandPushups_g01_c01.avi"}
    wanted = [rel for rel in listed if rel not in absent] + ["ApplyEyeMakeup/v_ApplyEyeMakeup_g99_c01.avi"]
    root = tmp_path_factory.mktemp("ucf101_mini")
    config = SyntheticMotionConfig(num_videos=len(wanted), seed=2, **TINY_VIDEO)
    for index, rel in enumerate(wanted):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, make_video(config, index).frames, 25.0, preset="ultrafast")
    return root, UCF_SPLITS


@pytest.fixture(scope="session")
def make_synthetic_dataset(tmp_path_factory) -> Callable[..., str]:
    """make(encoding="jpeg", num_videos=36, shard_target_bytes=...) -> the URI of an ingested
    synthetic dataset (16 frames, 64x48; split 1: 27 train, 9 test). Cached per arguments."""
    cache: dict[tuple, str] = {}

    def make(encoding: str = "jpeg", num_videos: int = 36, shard_target_bytes: int = 1_500_000) -> str:
        args = (encoding, num_videos, shard_target_bytes)
        if args not in cache:
            from h2s_dist.data.ingest import ingest
            from h2s_dist.data.sources import synthetic_entries
            from h2s_dist.data.synthetic import SyntheticMotionConfig

            out = tmp_path_factory.mktemp(f"synthetic_{encoding}")
            listing = synthetic_entries(SyntheticMotionConfig(num_videos=num_videos, **TINY_VIDEO))
            ingest(listing, str(out), encoding=encoding, size=None, shard_target_bytes=shard_target_bytes,
                   num_tasks=0, progress=False)
            cache[args] = str(out)
        return cache[args]

    return make


@pytest.fixture(scope="session")
def synthetic_dataset_uri(make_synthetic_dataset) -> str:
    """An ingested synthetic dataset (jpeg, 36 videos of 16 frames at 64x48, several shards)."""
    return make_synthetic_dataset()


def copy_with_corrupt_samples(dataset_uri: str, dst: pathlib.Path, victims: Iterable[str]) -> str:
    """Copy a local JPEG-stack dataset to `dst` (manifest, classes, shards) with the frames of
    every key in `victims` garbled after their header (they fail to decode); dst as a str."""
    src, victims = pathlib.Path(dataset_uri), set(victims)
    (dst / "shards").mkdir(parents=True)
    for name in ("manifest.parquet", "classes.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    for shard in (src / "shards").glob("*.tar"):
        with tarfile.open(shard) as tin, tarfile.open(dst / "shards" / shard.name, "w") as tout:
            for member in tin.getmembers():
                data = tin.extractfile(member).read()
                key, _, ext = member.name.partition(".")
                if key in victims and ext == "jpgs":
                    data = data[:40] + b"\0" * (len(data) - 40)
                tout.addfile(member, io.BytesIO(data))
    return str(dst)
