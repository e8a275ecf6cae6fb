"""Where the videos to ingest come from: UCF101, HMDB51, any folder or list, or synthetic.

Each listing function returns a `SourceListing`: the `VideoEntry` records (one per video
found on disk, sorted by path), the class names (index = label) and the split-list
entries that were not found on disk. Videos on disk that no split list names are kept,
with empty `splits`; list entries missing on disk are reported, never fatal.

    listing = ucf101_entries("/data/UCF-101", "/data/ucfTrainTestlist")
    listing.classes[0]   # "ApplyEyeMakeup"
    listing.entries[0]   # VideoEntry(path=".../v_ApplyEyeMakeup_g01_c01.avi", splits={1: "test", ...})

Split conventions:
  UCF101  classInd.txt "1 ApplyEyeMakeup" (1-based; label = n - 1); trainlist0N.txt
          "Class/v_Class_gXX_cYY.avi <n>"; testlist0N.txt "Class/v_Class_gXX_cYY.avi".
          Files have CRLF line ends. Matching is case-insensitive because the lists
          spell some names differently from the folders (HandstandPushups/v_HandStandPushups_...).
  HMDB51  <class>_test_split<N>.txt lines "<video>.avi <mark>", mark 1 = train,
          2 = test, 0 = not used in split N; classes sorted alphabetically.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from h2s_dist.data.synthetic import SyntheticMotionConfig

Subset = Literal["train", "test"]
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv")
SPLIT_IDS = (1, 2, 3)
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class VideoEntry:
    """One video to ingest.

    path: the source file (local path), or "synthetic:<index>" for generated videos.
    key: unique sample key, only [A-Za-z0-9_-] (see `sanitize_key`).
    label: class index into the listing's `classes`; -1 = unlabeled.
    splits: {split id: "train" | "test"}; a split the video is not part of is absent.
    generate: for in-memory videos, a picklable callable returning (frames (T,H,W,3)
        uint8 RGB, fps); None for files.
    size_bytes: the source file's size when the listing knew it (an S3 listing does), so
        planning needs no request per video; None = ask the file system.
    """

    path: str
    key: str
    label: int = -1
    class_name: str = ""
    splits: dict[int, Subset] = field(default_factory=dict)
    generate: Callable[[], tuple[np.ndarray, float]] | None = None
    size_bytes: int | None = None

    def split(self, split_id: int) -> str:
        """'train', 'test' or '' (not in split `split_id`)."""
        return self.splits.get(split_id, "")


@dataclass
class SourceListing:
    """The entries of one source, its class names (index = label) and what is missing.

    missing: split-list entries (as written in the list) with no file on disk.
    """

    name: str
    entries: list[VideoEntry]
    classes: list[str]
    missing: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[VideoEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def sanitize_key(name: str) -> str:
    """A file stem -> a sample key: runs of characters outside [A-Za-z0-9_-] become "_".

    "#20_Rhythm_clap_u_nm_np1_fr_goo_0" -> "_20_Rhythm_clap_u_nm_np1_fr_goo_0".
    """
    key = _KEY_BAD_CHARS.sub("_", name).strip("_") or "video"
    return key


def unique_keys(names: Iterable[tuple[str, str]]) -> list[str]:
    """(stem, path) pairs -> keys, unique: a repeated key gets "_" + 8 hex of its path's sha1.

    Deterministic for a given input order (callers pass sorted paths)."""
    keys: list[str] = []
    seen: set[str] = set()
    for stem, path in names:
        key = sanitize_key(stem)
        if key in seen:
            key = f"{key}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        seen.add(key)
        keys.append(key)
    return keys


def _read_lines(path: pathlib.Path) -> list[str]:
    """Non-empty stripped lines; CRLF or LF, trailing spaces ignored."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class _Found:
    """A video file found under a root: its URI (or path) and size."""

    uri: str
    size: int

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def folder(self) -> str:
        """The name of the folder holding it (the class folder in UCF101/HMDB51 layout)."""
        return posixpath.basename(posixpath.dirname(self.uri))


def _videos_in(root: str, recursive: bool = False) -> list[_Found]:
    """Video files in root/*/* (or anywhere under root), through the storage module: a local
    folder or an s3:// prefix alike."""
    from h2s_dist.data import storage

    pattern = storage.join(root, "**", "*") if recursive else storage.join(root, "*", "*")
    return [_Found(uri, size) for uri, size in storage.glob(pattern) if _is_video(uri)]


def _is_video(uri: str) -> bool:
    return posixpath.splitext(uri)[1].lower() in VIDEO_EXTENSIONS


def _require_dir(path: str | os.PathLike, what: str) -> str:
    from h2s_dist.data import storage

    text = os.fspath(path)
    if storage.is_remote(text):
        if not storage.exists(text):
            raise ValueError(f"{what} {text} holds no object; pass the prefix that holds the videos")
        return text
    if not pathlib.Path(text).is_dir():
        raise ValueError(f"{what} {text} is not a directory; pass the folder that holds it")
    return text


# --- UCF101 -----------------------------------------------------------------------


def read_ucf101_classes(splits_dir: str | os.PathLike) -> list[str]:
    """classInd.txt ("1 ApplyEyeMakeup", 1-based) -> class names, index = label."""
    path = pathlib.Path(splits_dir) / "classInd.txt"
    if not path.is_file():
        raise ValueError(f"{path} not found; --splits must be the ucfTrainTestlist folder")
    numbered = {}
    for line in _read_lines(path):
        number, name = line.split(maxsplit=1)
        numbered[int(number)] = name.strip()
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise ValueError(f"{path}: class numbers are not 1..{len(numbered)}")
    return [numbered[i] for i in range(1, len(numbered) + 1)]


def read_ucf101_splits(splits_dir: str | os.PathLike) -> dict[str, dict[int, Subset]]:
    """trainlist0N / testlist0N -> {"Class/v_Class_gXX_cYY.avi" as listed: {N: subset}}."""
    root = pathlib.Path(splits_dir)
    splits: dict[str, dict[int, Subset]] = {}
    for split_id in SPLIT_IDS:
        for subset in ("train", "test"):
            path = root / f"{subset}list{split_id:02d}.txt"
            if not path.is_file():
                continue
            for line in _read_lines(path):
                rel = line.split()[0].replace("\\", "/")
                splits.setdefault(rel, {})[split_id] = subset
    return splits


def ucf101_entries(root: str | os.PathLike, splits_dir: str | os.PathLike | None) -> SourceListing:
    """UCF101 laid out ROOT/ClassName/v_ClassName_gXX_cYY.avi, with its split lists.

    splits_dir: the folder holding classInd.txt and train/testlist0N.txt; None -> classes
    from the folder names (sorted), no splits.
    """
    files = _videos_in(_require_dir(root, "UCF101 root"))
    if splits_dir is None:
        classes = sorted({f.folder for f in files})
        split_map: dict[str, dict[int, Subset]] = {}
    else:
        classes = read_ucf101_classes(splits_dir)
        split_map = read_ucf101_splits(splits_dir)
    label_of = {name.lower(): i for i, name in enumerate(classes)}
    by_lower = {rel.lower(): splits for rel, splits in split_map.items()}
    keys = unique_keys((f.stem, f.uri) for f in files)
    entries, found = [], set()
    for f, key in zip(files, keys):
        rel = f"{f.folder}/{f.name}".lower()
        found.add(rel)
        label = label_of.get(f.folder.lower(), -1)
        class_name = classes[label] if label >= 0 else f.folder
        entries.append(VideoEntry(f.uri, key, label, class_name, dict(by_lower.get(rel, {})), size_bytes=f.size))
    missing = sorted(rel for rel in split_map if rel.lower() not in found)
    return SourceListing("ucf101", entries, classes, missing)


# --- HMDB51 -----------------------------------------------------------------------

_HMDB_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d+)\.txt$")
_HMDB_MARKS: dict[str, Subset | None] = {"1": "train", "2": "test", "0": None}


def read_hmdb51_splits(splits_dir: str | os.PathLike) -> tuple[list[str], dict[str, dict[int, Subset]]]:
    """<class>_test_split<N>.txt files -> (sorted classes, {"class/video.avi": {N: subset}})."""
    root = pathlib.Path(_require_dir(splits_dir, "HMDB51 splits folder"))
    classes: set[str] = set()
    splits: dict[str, dict[int, Subset]] = {}
    for path in sorted(root.glob("*_test_split*.txt")):
        match = _HMDB_SPLIT_FILE.match(path.name)
        if match is None:
            continue
        cls, split_id = match["cls"], int(match["n"])
        classes.add(cls)
        for line in _read_lines(path):
            parts = line.split()
            if len(parts) < 2 or parts[-1] not in _HMDB_MARKS:
                raise ValueError(f"{path}: expected '<video>.avi <0|1|2>', got {line!r}")
            name, mark = " ".join(parts[:-1]), parts[-1]
            subset = _HMDB_MARKS[mark]
            entry = splits.setdefault(f"{cls}/{name}", {})
            if subset is not None:
                entry[split_id] = subset
    if not classes:
        raise ValueError(f"no <class>_test_split<N>.txt files in {root}")
    return sorted(classes), splits


def hmdb51_entries(root: str | os.PathLike, splits_dir: str | os.PathLike | None) -> SourceListing:
    """HMDB51 laid out ROOT/class_name/*.avi, with its per-class split files."""
    files = _videos_in(_require_dir(root, "HMDB51 root"))
    if splits_dir is None:
        classes, split_map = sorted({f.folder for f in files}), {}
    else:
        classes, split_map = read_hmdb51_splits(splits_dir)
    label_of = {name: i for i, name in enumerate(classes)}
    keys = unique_keys((f.stem, f.uri) for f in files)
    entries, found = [], set()
    for f, key in zip(files, keys):
        rel = f"{f.folder}/{f.name}"
        found.add(rel)
        label = label_of.get(f.folder, -1)
        entries.append(VideoEntry(f.uri, key, label, f.folder, dict(split_map.get(rel, {})), size_bytes=f.size))
    missing = sorted(rel for rel in split_map if rel not in found)
    return SourceListing("hmdb51", entries, classes, missing)


# --- any videos -------------------------------------------------------------------


def unlabeled_entries(glob_or_listfile: str | os.PathLike) -> SourceListing:
    """Unlabeled videos (label -1) from a glob ("clips/**/*.mp4", "s3://bucket/corpus/**/*.mp4"),
    a folder or s3:// prefix (searched recursively for video extensions) or a local text file
    with one path or URI per line. Paths and URIs go through the storage module."""
    from h2s_dist.data import storage

    spec = os.fspath(glob_or_listfile)
    path = pathlib.Path(spec)
    missing: list[str] = []
    if not storage.is_remote(spec) and path.is_file() and not _is_video(spec):
        listed = [line for line in _read_lines(path) if not line.startswith("#")]
        resolved = [line if "://" in line or os.path.isabs(line) else str(path.parent / line) for line in listed]
        found = {}
        for uri in resolved:
            try:
                found[uri] = storage.size(uri)
            except FileNotFoundError:
                missing.append(uri)
        files = sorted(found.items())
    else:
        files = [(uri, n) for uri, n in storage.glob(spec) if _is_video(uri) or any(c in spec for c in "*?[")]
    files = sorted(set(files))
    keys = unique_keys((_Found(uri, n).stem, uri) for uri, n in files)
    entries = [VideoEntry(uri, key, size_bytes=n) for (uri, n), key in zip(files, keys)]
    return SourceListing("videos", entries, [], missing)


# --- synthetic --------------------------------------------------------------------


def _synthetic_frames(config: SyntheticMotionConfig, index: int) -> tuple[np.ndarray, float]:
    from h2s_dist.data.synthetic import make_video

    return make_video(config, index).frames, float(config.fps)


def synthetic_entries(config: SyntheticMotionConfig) -> SourceListing:
    """The synthetic motion dataset, rendered in memory by the ingest workers (no files).

    Video i: label i % 9, class `config.class_names[label]`, key `synthetic.video_key(i,
    config.classes)`, split 1 from `synthetic.synthetic_split(i)` (the synthetic set has one
    split only)."""
    from h2s_dist.data import synthetic

    names = config.class_names
    entries = []
    for index in range(config.num_videos):
        label = index % len(names)
        generate = functools.partial(_synthetic_frames, config, index)
        splits: dict[int, Subset] = {1: synthetic.synthetic_split(index)}  # type: ignore[dict-item]
        entries.append(VideoEntry(f"synthetic:{index}", synthetic.video_key(index, config.classes), label,
                                  names[label], splits, generate))
    return SourceListing("synthetic", entries, list(names))
