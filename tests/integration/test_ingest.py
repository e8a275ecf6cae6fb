"""Ingest end to end on tiny generated videos: shards, manifest, bad files, resume, S3, CLI."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import tarfile

import pytest

from h2s_dist.data import codec, manifest, sources
from h2s_dist.data.ingest import IngestOptions, ingest, plan_shards
from h2s_dist.data.ingest_cli import ingest_cli
from h2s_dist.data.synthetic import SyntheticMotionConfig

SMALL = (64, 48)
MEMBER = re.compile(r"^[A-Za-z0-9_-]+\.(h264s|jpgs|mp4|json)$")


def _shards(uri: str) -> list[pathlib.Path]:
    return sorted(pathlib.Path(uri, "shards").glob("shard-*.tar"))


def _members(uri: str) -> list[str]:
    names = []
    for path in _shards(uri):
        with tarfile.open(path) as tar:
            names += tar.getnames()
    return names


@pytest.fixture
def folder_with_bad_files(video_folder, tmp_path) -> pathlib.Path:
    root = tmp_path / "videos"
    shutil.copytree(video_folder, root)
    good = sorted(root.rglob("*.avi"))[0].read_bytes()
    (root / "Broken").mkdir()
    (root / "Broken" / "truncated.avi").write_bytes(good[: len(good) // 2])
    (root / "Broken" / "empty.avi").write_bytes(b"")
    (root / "Broken" / "notes.avi").write_text("this is not a video\n")
    return root


def test_bad_files_are_skipped_and_named_with_reasons(folder_with_bad_files, tmp_path):
    out = str(tmp_path / "ds")
    listing = sources.unlabeled_entries(folder_with_bad_files)
    report = ingest(listing, out, size=SMALL, shard_target_bytes=300_000, num_tasks=0, progress=False)
    assert (report.num_entries, report.num_ok, report.num_skipped) == (21, 18, 3)
    reasons = {pathlib.Path(s.source).name: s.reason for s in report.skipped}
    assert reasons["empty.avi"] == "empty file"
    assert reasons["notes.avi"].startswith("not a video")
    assert reasons["truncated.avi"].startswith("truncated")
    saved = json.loads(pathlib.Path(out, "ingest_report.json").read_text())
    assert saved["num_skipped"] == 3 and len(saved["skipped"]) == 3
    assert {pathlib.Path(s["source"]).name: s["reason"] for s in saved["skipped"]} == reasons
    table = manifest.read_manifest(out)
    assert table.num_rows == 18 and "truncated" not in table.column("key").to_pylist()


def test_manifest_schema_and_samples_agree(synthetic_dataset_uri):
    table = manifest.read_manifest(synthetic_dataset_uri)
    assert table.schema.equals(manifest.MANIFEST_SCHEMA)
    assert table.num_rows == 36 and len(set(table.column("key").to_pylist())) == 36
    assert manifest.read_classes(synthetic_dataset_uri)[0] == "translate_left"
    row = table.slice(0, 1).to_pylist()[0]
    assert (row["width"], row["height"], row["num_frames"], row["encoding"]) == (64, 48, 16, "jpeg")
    assert re.fullmatch(r"[0-9a-f]{64}", row["sha256"])
    assert row["shard"].startswith("shards/shard-")  # relative to the dataset: relocatable
    with tarfile.open(manifest.shard_uri(synthetic_dataset_uri, row["shard"])) as tar:
        meta = json.load(tar.extractfile(f"{row['key']}.json"))
        payload = tar.extractfile(f"{row['key']}.jpgs").read()
    assert meta == {k: row[k] for k in ("key", "label", "class_name", "num_frames", "width", "height", "source",
                                        "encoding", "source_key", "start_frame")} | {"fps": 25.0}
    assert (row["source_key"], row["start_frame"]) == (row["key"], 0)  # whole videos: synthetic keeps them whole
    assert len(payload) == row["stored_bytes"]
    clip = codec.decode_frames({"jpgs": payload, "json": json.dumps(meta)}, start=5, length=11)
    assert clip.shape == (11, 48, 64, 3)


def test_tar_members_are_flat_safe_names(synthetic_dataset_uri):
    names = _members(synthetic_dataset_uri)
    assert names and all(MEMBER.match(n) for n in names)
    with tarfile.open(_shards(synthetic_dataset_uri)[0]) as tar:
        assert all(m.isfile() and m.mode == 0o444 for m in tar.getmembers())


def test_every_shard_is_pure_for_split_1_train_first(synthetic_dataset_uri):
    table = manifest.read_manifest(synthetic_dataset_uri).to_pylist()
    by_shard: dict[str, set[str]] = {}
    for row in table:
        by_shard.setdefault(row["shard"], set()).add(row["split_1"])
    assert all(len(s) == 1 for s in by_shard.values())
    order = [r["split_1"] for r in table]
    assert order == sorted(order, key=["train", "test", ""].index)
    train = manifest.select(manifest.read_manifest(synthetic_dataset_uri), split=1, subset="train")
    assert train.num_rows == 27


def test_ucf101_split_columns_follow_the_lists(ucf101_mini, tmp_path):
    root, splits = ucf101_mini
    listing = sources.ucf101_entries(root, splits)
    report = ingest(listing, str(tmp_path / "ds"), size=SMALL, num_tasks=0, progress=False)
    assert report.num_ok == 8 and len(report.missing) == 2
    rows = {r["key"]: r for r in manifest.read_manifest(str(tmp_path / "ds")).to_pylist()}
    assert (rows["v_ApplyEyeMakeup_g08_c01"]["split_1"], rows["v_ApplyEyeMakeup_g08_c01"]["split_2"]) == ("train", "test")
    assert rows["v_ApplyEyeMakeup_g01_c01"]["split_1"] == "test"
    assert rows["v_ApplyEyeMakeup_g99_c01"]["split_1"] == ""  # on disk, in no list: kept
    assert rows["v_HandStandPushups_g08_c01"]["label"] == 36
    assert len(manifest.read_classes(str(tmp_path / "ds"))) == 101


def test_plan_is_deterministic_and_never_mixes_split_1_groups():
    listing = sources.synthetic_entries(SyntheticMotionConfig(num_videos=40, num_frames=2, height=16, width=16))
    options = IngestOptions(shard_target_bytes=500_000)
    shards = plan_shards(listing.entries, options)
    assert [[e.key for e in s] for s in shards] == [[e.key for e in s] for s in plan_shards(listing.entries[::-1], options)]
    assert all(len({e.split(1) for e in s}) == 1 for s in shards)
    assert sum(map(len, shards)) == 40


class _Crash(RuntimeError):
    pass


def test_resume_after_a_crash_rewrites_no_finished_shard(tmp_path):
    out = str(tmp_path / "ds")
    listing = sources.synthetic_entries(SyntheticMotionConfig(num_videos=27, num_frames=12, height=32, width=48))
    kwargs = dict(size=None, shard_target_bytes=600_000, num_tasks=0, progress=False)

    def crash_after_second(index: int) -> None:
        if index == 1:
            raise _Crash

    with pytest.raises(_Crash):
        ingest(listing, out, on_shard_done=crash_after_second, **kwargs)
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _shards(out)}
    assert sorted(finished) == ["shard-000000.tar", "shard-000001.tar"]
    assert not pathlib.Path(out, "manifest.parquet").exists()

    written: list[int] = []
    report = ingest(listing, out, on_shard_done=written.append, **kwargs)
    assert report.shards_reused == 2 and written == list(range(2, report.num_shards))
    for name, stamp in finished.items():
        stat = pathlib.Path(out, "shards", name).stat()
        assert (stat.st_ino, stat.st_mtime_ns) == stamp
    assert report.num_ok == 27 and manifest.read_manifest(out).num_rows == 27


def test_resume_with_other_options_is_refused(tmp_path):
    out = str(tmp_path / "ds")
    listing = sources.synthetic_entries(SyntheticMotionConfig(num_videos=3, num_frames=12, height=16, width=16))
    ingest(listing, out, size=None, num_tasks=0, progress=False)
    with pytest.raises(ValueError, match="--no-resume"):
        ingest(listing, out, size=None, encoding="mp4", num_tasks=0, progress=False)
    report = ingest(listing, out, size=None, encoding="mp4", num_tasks=0, progress=False, resume=False)
    assert report.shards_written == report.num_shards and _shards(out)


def test_no_good_video_is_an_error_that_names_the_report(tmp_path):
    (tmp_path / "a.avi").write_bytes(b"")
    (tmp_path / "b.avi").write_text("text")
    with pytest.raises(ValueError, match="no video could be ingested.*ingest_report.json"):
        ingest(sources.unlabeled_entries(tmp_path), str(tmp_path / "ds"), num_tasks=0, progress=False)
    with pytest.raises(ValueError, match="no videos to ingest"):
        ingest([], str(tmp_path / "ds2"), progress=False)


def test_too_short_video_is_skipped(tmp_path):
    listing = sources.synthetic_entries(SyntheticMotionConfig(num_videos=2, num_frames=8, height=16, width=16))
    with pytest.raises(ValueError, match="too short"):
        ingest(listing, str(tmp_path / "ds"), size=None, num_tasks=0, progress=False)
    report = json.loads((tmp_path / "ds" / "ingest_report.json").read_text())
    assert report["skipped"][0]["reason"] == "too short: 8 frames, need 11"


def test_ingest_to_s3_and_resume_there(s3_env):
    from h2s_dist.data import storage

    uri = s3_env
    listing = sources.synthetic_entries(SyntheticMotionConfig(num_videos=9, num_frames=12, height=16, width=16))
    report = ingest(listing, storage.join(uri, "ds"), size=None, shard_target_bytes=600_000, num_tasks=0,
                    progress=False)
    table = manifest.read_manifest(storage.join(uri, "ds"))
    assert table.num_rows == 9 and all(s.startswith("shards/") for s in table.column("shard").to_pylist())
    assert storage.exists(manifest.shard_uri(storage.join(uri, "ds"), table.column("shard")[0].as_py()))
    rerun = ingest(listing, storage.join(uri, "ds"), size=None, shard_target_bytes=600_000, num_tasks=0,
                   progress=False)
    assert rerun.shards_reused == report.num_shards


def test_cli_ingests_synthetic_and_prints_a_summary(tmp_path, capsys):
    code = ingest_cli(["synthetic", "--output", str(tmp_path / "ds"), "--num-videos", "9",
                                  "--num-frames", "12", "--height", "16", "--width", "16", "--num-tasks", "0",
                                  "--no-progress", "--encoding", "mp4"])
    out = capsys.readouterr().out
    assert code == 0 and "ingested 9 of 9 videos" in out and "manifest.parquet" in out
    assert set(manifest.read_manifest(str(tmp_path / "ds")).column("encoding").to_pylist()) == {"mp4"}
    with pytest.raises(SystemExit):
        ingest_cli(["ucf101", "--help"])
    assert "h2s ingest ucf101" in capsys.readouterr().out


def test_cli_description_is_the_first_line_of_the_ingest_docstring():
    # ingest_cli keeps its own copy so that `h2s --help` does not import the ingest.
    from h2s_dist.data import ingest as ingest_lib
    from h2s_dist.data import ingest_cli as cli_module

    assert cli_module._DESCRIPTION == ingest_lib.__doc__.split("\n\n")[0]  # noqa: SLF001
