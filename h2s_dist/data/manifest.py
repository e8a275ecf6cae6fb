"""The dataset manifest (one Parquet row per ingested video) and the class list.

Layout at a dataset URI (plain path, file:// or s3://), see docs/data.md:
  URI/manifest.parquet   MANIFEST_SCHEMA, rows in shard order
  URI/classes.json       {"classes": [...]}, index = label

    table = read_manifest("s3://bucket/ucf101")
    train = select(table, split=1, subset="train")
    shards = sorted({shard_uri("s3://bucket/ucf101", s) for s in train.column("shard").to_pylist()})

A dataset is relocatable: the manifest names each shard relative to the dataset URI
("shards/shard-000003.tar") and a reader resolves it against the URI it reads the manifest
from, so a dataset ingested on a laptop and synced to a bucket, or mounted at another path
on the nodes, reads from where it now lives. Manifests written before held full URIs; a
reader takes their basename under URI/shards/, where every writer puts its shards.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from h2s_dist.data import storage

MANIFEST_NAME = "manifest.parquet"
SHARDS_DIR = "shards"
CLASSES_NAME = "classes.json"
SPLIT_COLUMNS = ("split_1", "split_2", "split_3")
SUBSETS = ("train", "test")

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),  # the tar holding the sample, relative to the dataset URI (shard_uri)
        ("label", pa.int32()),  # -1 = unlabeled
        ("class_name", pa.string()),
        ("split_1", pa.string()),  # "train" | "test" | "" (not in that split)
        ("split_2", pa.string()),
        ("split_3", pa.string()),
        ("num_frames", pa.int32()),
        ("fps", pa.float32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("stored_bytes", pa.int64()),  # size of the encoded video member
        ("source", pa.string()),
        ("sha256", pa.string()),  # of the source file (of the frames for synthetic videos)
        ("encoding", pa.string()),  # "mp4" | "jpeg"
        # A video longer than the ingest's segment is stored as several samples (segments):
        ("source_key", pa.string()),  # the key of the video the sample was cut from (= key when whole)
        ("start_frame", pa.int32()),  # the sample's first frame in that video (0 when whole)
    ]
)
# Columns a manifest written before segments lacks, and what they are for a whole video.
SEGMENT_DEFAULTS = {"source_key": lambda row: row["key"], "start_frame": lambda row: 0}


def relative_shard(shard: str) -> str:
    """What a manifest names shard `shard` by: its path relative to the dataset URI.

    A relative name is kept; a full path or URI (manifests, and done records of
    interrupted ingests, written before names were relative) becomes shards/<basename>,
    where every writer puts its shards."""
    if "://" in shard or posixpath.isabs(shard):
        return posixpath.join(SHARDS_DIR, posixpath.basename(shard.rstrip("/")))
    return shard


def shard_uri(dataset_uri: str, shard: str) -> str:
    """The URI of a manifest row's `shard` in the dataset read from `dataset_uri`."""
    return storage.join(dataset_uri, relative_shard(shard))


def manifest_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with every MANIFEST_SCHEMA field) -> a table with exactly that schema,
    shards named relative to the dataset (relative_shard)."""
    missing = [n for n in MANIFEST_SCHEMA.names if rows and n not in rows[0] and n not in SEGMENT_DEFAULTS]
    if missing:
        raise ValueError(f"manifest rows lack fields {missing}")
    columns = {name: [row[name] if name in row else SEGMENT_DEFAULTS[name](row) for row in rows]
               for name in MANIFEST_SCHEMA.names}
    columns["shard"] = [relative_shard(s) for s in columns["shard"]]
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def write_manifest(dataset_uri: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write URI/manifest.parquet atomically; returns its URI."""
    buffer = io.BytesIO()
    pq.write_table(manifest_table(rows), buffer)
    uri = storage.join(dataset_uri, MANIFEST_NAME)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def read_manifest(dataset_uri: str) -> pa.Table:
    """URI/manifest.parquet -> pyarrow.Table (MANIFEST_SCHEMA); a manifest written before
    segments gets their columns (every row a whole video: source_key = key, start_frame 0)."""
    uri = storage.join(dataset_uri, MANIFEST_NAME)
    if not storage.exists(uri):
        raise ValueError(f"{uri} not found: is {dataset_uri} an ingested dataset? (run `h2s ingest`)")
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    if "source_key" not in table.column_names:
        table = table.append_column(MANIFEST_SCHEMA.field("source_key"), table.column("key"))
    if "start_frame" not in table.column_names:
        table = table.append_column(MANIFEST_SCHEMA.field("start_frame"), pa.array([0] * table.num_rows, pa.int32()))
    return table


def write_classes(dataset_uri: str, classes: Sequence[str]) -> str:
    uri = storage.join(dataset_uri, CLASSES_NAME)
    storage.write_bytes(uri, json.dumps({"classes": list(classes)}, indent=1).encode())
    return uri


def read_classes(dataset_uri: str) -> list[str]:
    """URI/classes.json -> class names, index = label (empty for unlabeled datasets)."""
    uri = storage.join(dataset_uri, CLASSES_NAME)
    if not storage.exists(uri):
        raise ValueError(f"{uri} not found: is {dataset_uri} an ingested dataset? (run `h2s ingest`)")
    return list(json.loads(storage.read_bytes(uri))["classes"])


def select(table: pa.Table, split: int | None = None, subset: str | None = None) -> pa.Table:
    """Rows of `subset` ("train" | "test") in split `split` (1..3), order kept.

    split None -> every row (subset must be None); subset None -> every row of the split
    (train and test, not the unused ones).
    """
    if split is None:
        if subset is not None:
            raise ValueError(f"subset={subset!r} needs a split (1, 2 or 3)")
        return table
    if split not in (1, 2, 3):
        raise ValueError(f"split must be 1, 2 or 3, got {split!r}")
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    column = table.column(f"split_{split}")
    wanted = [subset] if subset is not None else list(SUBSETS)
    return table.filter(pc.is_in(column, value_set=pa.array(wanted)))
