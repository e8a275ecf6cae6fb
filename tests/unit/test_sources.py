"""Split-list parsing and entry listing (tests/data holds a few lines of the real CRLF lists)."""

from __future__ import annotations

import pathlib
import re

import pytest

from h2s_dist.data import sources

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
UCF_SPLITS = DATA / "ucf101_splits"
HMDB_SPLITS = DATA / "hmdb51_splits"


def _touch(root: pathlib.Path, *relpaths: str) -> None:
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_test_copies_keep_crlf_line_ends():
    assert b"\r\n" in (UCF_SPLITS / "trainlist01.txt").read_bytes()
    assert b"\r\n" in (UCF_SPLITS / "classInd.txt").read_bytes()


def test_ucf101_classind_is_one_based_and_stripped():
    classes = sources.read_ucf101_classes(UCF_SPLITS)
    assert len(classes) == 101
    assert classes[0] == "ApplyEyeMakeup" and classes[36] == "HandstandPushups"
    assert all("\r" not in c and c == c.strip() for c in classes)


def test_ucf101_splits_map_each_video_per_split():
    splits = sources.read_ucf101_splits(UCF_SPLITS)
    assert splits["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"] == {1: "train", 2: "test"}
    assert splits["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"] == {1: "test", 2: "train"}


def test_ucf101_entries_labels_splits_extras_and_missing(tmp_path):
    _touch(
        tmp_path,
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",  # train in split 1
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",  # test in split 1
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",  # the lists' own spelling
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g99_c01.avi",  # on disk, in no list
        "ApplyEyeMakeup/notes.txt",  # not a video
    )
    listing = sources.ucf101_entries(tmp_path, UCF_SPLITS)
    by_key = {e.key: e for e in listing}
    assert sorted(by_key) == [
        "v_ApplyEyeMakeup_g01_c01", "v_ApplyEyeMakeup_g08_c01", "v_ApplyEyeMakeup_g99_c01", "v_HandStandPushups_g08_c01",
    ]
    assert by_key["v_ApplyEyeMakeup_g08_c01"].splits == {1: "train", 2: "test"}
    assert by_key["v_ApplyEyeMakeup_g01_c01"].split(1) == "test"
    assert by_key["v_ApplyEyeMakeup_g99_c01"].splits == {}
    hand = by_key["v_HandStandPushups_g08_c01"]
    assert (hand.label, hand.class_name, hand.split(1)) == (36, "HandstandPushups", "train")
    # 9 videos listed (the split-2 lists name the same ones), 3 of them on disk.
    assert len(listing.missing) == 6
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi" in listing.missing


def test_hmdb51_marks_map_to_train_test_and_unused(tmp_path):
    _touch(
        tmp_path,
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
        "brush_hair/Aussie_Brunette_Brushing_Long_Hair_brush_hair_u_nm_np1_ba_med_3.avi",
        "brush_hair/Aussie_Brunette_Brushing_Hair_II_brush_hair_u_nm_np1_ba_goo_4.avi",
        "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
    )
    listing = sources.hmdb51_entries(tmp_path, HMDB_SPLITS)
    assert listing.classes == ["brush_hair", "cartwheel"]
    by_source = {pathlib.Path(e.path).name: e for e in listing}
    assert by_source["April_09_brush_hair_u_nm_np1_ba_goo_0.avi"].split(1) == "train"
    assert by_source["Aussie_Brunette_Brushing_Long_Hair_brush_hair_u_nm_np1_ba_med_3.avi"].split(1) == "test"
    assert by_source["Aussie_Brunette_Brushing_Hair_II_brush_hair_u_nm_np1_ba_goo_4.avi"].split(1) == ""
    odd = by_source["(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi"]
    assert (odd.key, odd.label) == ("Rad_Schlag_die_Bank__cartwheel_f_cm_np1_le_med_0", 1)
    assert len(listing.missing) == 2  # goo_1 and the Aerial cartwheel


@pytest.mark.parametrize("stem, key", [("v_A_g01_c01", "v_A_g01_c01"), ("a.b c", "a_b_c"), ("../x", "x"), ("...", "video")])
def test_sanitize_key_keeps_only_the_key_charset(stem, key):
    assert sources.sanitize_key(stem) == key


def test_unique_keys_suffix_repeats_deterministically():
    keys = sources.unique_keys([("a b", "/x/a b.avi"), ("a_b", "/y/a_b.avi"), ("a-b", "/z/a-b.avi")])
    assert keys[0] == "a_b" and keys[1].startswith("a_b_") and len(keys[1]) == 12 and keys[2] == "a-b"
    assert keys == sources.unique_keys([("a b", "/x/a b.avi"), ("a_b", "/y/a_b.avi"), ("a-b", "/z/a-b.avi")])


def test_unlabeled_entries_from_recursive_glob_folder_and_listfile(tmp_path):
    _touch(tmp_path, "a/x.mp4", "a/b/y.avi", "a/b/z.txt", "c/x.mp4")
    from_glob = sources.unlabeled_entries(str(tmp_path / "**" / "*.mp4"))
    assert [pathlib.Path(e.path).relative_to(tmp_path).as_posix() for e in from_glob] == ["a/x.mp4", "c/x.mp4"]
    assert len({e.key for e in from_glob}) == 2 and all(e.label == -1 for e in from_glob)
    assert len(sources.unlabeled_entries(tmp_path)) == 3
    listfile = tmp_path / "list.txt"
    listfile.write_text("a/b/y.avi\r\n" + str(tmp_path / "c/x.mp4") + "\r\nnot/there.avi\r\n")
    listed = sources.unlabeled_entries(listfile)
    assert [pathlib.Path(e.path).name for e in listed] == ["y.avi", "x.mp4"]
    assert listed.missing == [str(tmp_path / "not/there.avi")]


def test_synthetic_entries_need_no_files():
    from h2s_dist.data.synthetic import SyntheticMotionConfig

    listing = sources.synthetic_entries(SyntheticMotionConfig(num_videos=12, num_frames=4, height=16, width=16))
    assert len(listing) == 12 and listing.classes[0] == listing.entries[0].class_name
    assert listing.entries[10].label == 1
    frames, fps = listing.entries[0].generate()
    assert frames.shape == (4, 16, 16, 3) and fps == 25.0
    scenes = sources.synthetic_entries(SyntheticMotionConfig(num_videos=12, num_frames=4, height=16, width=16,
                                                             classes="scene_x_motion"))
    assert scenes.classes[4] == scenes.entries[4].class_name == "forest_rotate_ccw"
    assert scenes.entries[13 - 2].key == "v_DesertZoomIn_g02_c01"


def test_full_real_split_lists_have_the_published_counts(shared_data):
    ucf = shared_data / "ucf101_splits"
    assert len(sources.read_ucf101_classes(ucf)) == 101
    splits = sources.read_ucf101_splits(ucf)
    assert sum(s.get(1) == "train" for s in splits.values()) == 9537
    assert sum(s.get(1) == "test" for s in splits.values()) == 3783
    classes, hmdb = sources.read_hmdb51_splits(shared_data / "hmdb51_splits")
    assert len(classes) == 51
    assert sum(s.get(1) == "train" for s in hmdb.values()) == 3570  # 70 per class
    assert sum(s.get(1) == "test" for s in hmdb.values()) == 1530  # 30 per class


def _long_names() -> list[tuple[str, str]]:
    lines = (DATA / "long_names.txt").read_text().splitlines()
    return [tuple(line.split(" ", 1)) for line in lines if line.strip() and not line.startswith("#")]


def test_long_names_list_holds_the_longest_and_oddest_official_names(shared_data):
    """tests/data/long_names.txt (the names test_ingest_names.py ingests) against the lists."""
    _, hmdb = sources.read_hmdb51_splits(shared_data / "hmdb51_splits")
    ucf = sources.read_ucf101_splits(shared_data / "ucf101_splits")
    listed = _long_names()
    by_length = sorted(hmdb, key=lambda rel: -len(rel.split("/", 1)[1]))
    assert {rel for src, rel in listed if src == "hmdb51"} >= set(by_length[:50])
    assert {rel for src, rel in listed if src == "ucf101"} <= set(ucf)
    odd = {c for rel in hmdb for c in rel.split("/", 1)[1] if not (c.isascii() and (c.isalnum() or c in "_.-"))}
    assert odd == {c for src, rel in listed for c in rel.split("/", 1)[1] if src == "hmdb51"} & odd


def test_every_official_name_gets_a_safe_unique_key(shared_data):
    _, hmdb = sources.read_hmdb51_splits(shared_data / "hmdb51_splits")
    ucf = sources.read_ucf101_splits(shared_data / "ucf101_splits")
    stems = [(pathlib.PurePosixPath(rel).stem, rel) for rel in sorted(hmdb) + sorted(ucf)]
    keys = sources.unique_keys(stems)
    assert len(set(keys)) == len(keys) == len(hmdb) + len(ucf)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys)
    assert max(map(len, keys)) > 100  # longer than a ustar member name: shards need PAX
