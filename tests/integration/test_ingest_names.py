"""Every real file name ingests, and no single input stops an ingest.

Tiny generated videos are named after the longest and oddest entries of the official UCF101
and HMDB51 lists (tests/data/long_names.txt: 116-character names, '!', '#', '&', '(', '[',
'@', ...) plus names no list has but user corpora do (dots, spaces, apostrophes, non-ASCII),
go through the real sources and ingest, and every sample is read back with its label. A
corrupt file and entries with unusable keys are skipped and reported while the good videos
all land (a video that kills its worker process: tests/integration/test_ingest_ray.py).
"""

from __future__ import annotations

import json
import pathlib
import tarfile

import pytest
import webdataset as wds

from h2s_dist.data import codec, manifest, shard_io, sources
from h2s_dist.data.ingest import ingest
from h2s_dist.data.skips import SkipRecorder
from h2s_dist.data.synthetic import SyntheticMotionConfig, make_video
from h2s_dist.data.video import write_video

pytestmark = pytest.mark.integration

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
SMALL = (64, 48)
TINY = SyntheticMotionConfig(num_videos=100, num_frames=12, height=48, width=64, seed=3)
# On disk beside the listed names, in no list: what user folders hold.
UNLISTED = ["clip.v2.final.avi", "my video (1).avi", "O'Neil's wave.avi", "vidéo_été.avi"]
CORRUPT = "corrupt_[broken]!.avi"


def _listed() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {"hmdb51": [], "ucf101": []}
    for line in (DATA / "long_names.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            source, rel = line.split(" ", 1)
            names[source].append(rel)
    return names


def _write(path: pathlib.Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, make_video(TINY, index).frames, 25.0, preset="ultrafast")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, tuple[pathlib.Path, pathlib.Path, dict[str, str]]]:
    """{source: (root, splits dir, {file name on disk: class})}: every listed name as a tiny
    video; HMDB51 also holds UNLISTED and CORRUPT in the first listed class."""
    base, listed, made = tmp_path_factory.mktemp("named"), _listed(), {}
    index = 0
    for source, rels in listed.items():
        root, splits = base / source, base / f"{source}_splits"
        splits.mkdir()
        on_disk = {}
        for rel in rels:
            _write(root / rel, index)
            index += 1
            on_disk[rel] = rel.split("/")[0]
        classes = sorted({rel.split("/")[0] for rel in rels})
        if source == "hmdb51":
            for cls in classes:  # mark 1 = train, 2 = test, alternating
                lines = [f"{rel.split('/')[1]} {1 + n % 2}" for n, rel in enumerate(rels) if rel.startswith(cls + "/")]
                (splits / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
            extra = classes[0]
            for name in UNLISTED:
                _write(root / extra / name, index)
                index += 1
                on_disk[f"{extra}/{name}"] = extra
            good = (root / rels[0]).read_bytes()
            (root / extra / CORRUPT).write_bytes(good[: len(good) // 3])
        else:
            (splits / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)))
            (splits / "trainlist01.txt").write_text("".join(f"{rel} 1\r\n" for rel in rels[::2]))
            (splits / "testlist01.txt").write_text("".join(f"{rel}\r\n" for rel in rels[1::2]))
        made[source] = (root, splits, on_disk)
    return made


@pytest.mark.parametrize("source", ["hmdb51", "ucf101"])
def test_every_listed_name_ingests_and_reads_back_with_its_label(corpora, source, tmp_path):
    root, splits, on_disk = corpora[source]
    listing = sources.hmdb51_entries(root, splits) if source == "hmdb51" else sources.ucf101_entries(root, splits)
    out = str(tmp_path / "ds")
    report = ingest(listing, out, size=SMALL, shard_target_bytes=400_000, num_tasks=0, progress=False)

    corrupt = [s for s in report.skipped if s.source.endswith(CORRUPT)]
    assert report.num_ok == len(on_disk) and report.num_skipped == len(corrupt) == (source == "hmdb51")
    assert not report.missing
    rows = manifest.read_manifest(out).to_pylist()
    classes = manifest.read_classes(out)
    by_source = {pathlib.Path(r["source"]).relative_to(root).as_posix(): r for r in rows}
    assert set(by_source) == set(on_disk)
    for rel, cls in on_disk.items():
        assert classes[by_source[rel]["label"]] == cls, rel

    # Our shard reader: every sample, whole, with the manifest's label, frames decode.
    videos = shard_io.selected_videos(out, None, None)
    recorder, seen = SkipRecorder(), {}
    for sample in shard_io.iter_samples(sorted({v.shard for v in videos}), {v.key for v in videos}, recorder, None):
        meta = json.loads(sample["json"])
        assert codec.decode_frames(sample, 0, 11).shape == (11, SMALL[1], SMALL[0], 3)
        seen[sample["__key__"]] = meta["label"]
    assert not recorder.skipped
    assert seen == {r["key"]: r["label"] for r in rows}
    # webdataset itself, which splits a sample's key at the first dot of the member name.
    plain = {s["__key__"]: json.loads(s["json"])["label"] for s in wds.WebDataset(sorted({v.shard for v in videos}), shardshuffle=False)}
    assert plain == seen
    if source == "hmdb51":
        longest = max(len(m) for v in videos for m in tarfile.open(v.shard).getnames())
        assert longest > 100  # longer than ustar allows: these shards need PAX


def test_entries_with_unusable_keys_are_skipped_not_fatal(tmp_path):
    listing = sources.synthetic_entries(SyntheticMotionConfig(num_videos=4, num_frames=12, height=48, width=64))
    good = list(listing.entries)
    dotted = sources.VideoEntry("a.b.c.avi", "a.b.c", generate=good[0].generate)
    repeat = sources.VideoEntry("again", good[1].key, generate=good[1].generate)
    report = ingest(good + [dotted, repeat], str(tmp_path / "ds"), size=None, num_tasks=0, progress=False)
    assert [(s.key, s.reason.split(":")[0]) for s in report.skipped] == [("a.b.c", "bad key"), (good[1].key, "repeated key")]
    assert report.num_entries == 6 and report.num_ok == 4
    assert set(manifest.read_manifest(str(tmp_path / "ds")).column("key").to_pylist()) == {e.key for e in good}
